/* <linux/videodev2.h>: the V4L2 streaming subset a capture program needs
 * (examples/v4l2_capture.py): identify the device, negotiate a format, request,
 * queue, dequeue and export buffers, start and stop streaming, in the single- and
 * multi-planar APIs. Enumerators of enum v4l2_buf_type, v4l2_memory and v4l2_field
 * are #defines here (cffi takes only the ones we use); values are the header's. */
#define VIDEO_MAX_PLANES 8

#define V4L2_FIELD_ANY  0
#define V4L2_FIELD_NONE 1

#define V4L2_BUF_TYPE_VIDEO_CAPTURE        1
#define V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE 9

#define V4L2_MEMORY_MMAP   1
#define V4L2_MEMORY_DMABUF 4

#define V4L2_CAP_VIDEO_CAPTURE        0x00000001
#define V4L2_CAP_VIDEO_CAPTURE_MPLANE 0x00001000
#define V4L2_CAP_STREAMING            0x04000000
#define V4L2_CAP_DEVICE_CAPS          0x80000000

#define V4L2_BUF_FLAG_ERROR 0x00000040

/* v4l2_fourcc(a, b, c, d): a | b << 8 | c << 16 | d << 24 */
#define V4L2_PIX_FMT_YUYV    0x56595559
#define V4L2_PIX_FMT_UYVY    0x59565955
#define V4L2_PIX_FMT_NV12    0x3231564E
#define V4L2_PIX_FMT_NV21    0x3132564E
#define V4L2_PIX_FMT_NV12M   0x32314D4E
#define V4L2_PIX_FMT_NV21M   0x31324D4E
#define V4L2_PIX_FMT_YUV420  0x32315559
#define V4L2_PIX_FMT_YVU420  0x32315659
#define V4L2_PIX_FMT_YUV420M 0x32314D59

/* <sys/time.h>, as the header's userspace build uses it (v4l2_buffer.timestamp) */
struct timeval {
    long tv_sec;
    long tv_usec;
};

struct v4l2_capability {
    uint8_t driver[16];
    uint8_t card[32];
    uint8_t bus_info[32];
    uint32_t version;
    uint32_t capabilities;
    uint32_t device_caps;
    uint32_t reserved[3];
};

struct v4l2_fmtdesc {
    uint32_t index;
    uint32_t type;
    uint32_t flags;
    uint8_t description[32];
    uint32_t pixelformat;
    uint32_t mbus_code;
    uint32_t reserved[3];
};

struct v4l2_rect {
    int32_t left;
    int32_t top;
    uint32_t width;
    uint32_t height;
};

struct v4l2_clip;

/* Declared for its pointers: they give the v4l2_format union its 8-byte alignment. */
struct v4l2_window {
    struct v4l2_rect w;
    uint32_t field;
    uint32_t chromakey;
    struct v4l2_clip *clips;
    uint32_t clipcount;
    void *bitmap;
    uint8_t global_alpha;
};

struct v4l2_pix_format {
    uint32_t width;
    uint32_t height;
    uint32_t pixelformat;
    uint32_t field;
    uint32_t bytesperline;
    uint32_t sizeimage;
    uint32_t colorspace;
    uint32_t priv;
    uint32_t flags;
    union {
        uint32_t ycbcr_enc;
        uint32_t hsv_enc;
    };
    uint32_t quantization;
    uint32_t xfer_func;
};

/* __attribute__((packed)) in the header; every field is naturally aligned, so the
 * plain layout is the same (20 bytes; the ABI test checks it). */
struct v4l2_plane_pix_format {
    uint32_t sizeimage;
    uint32_t bytesperline;
    uint16_t reserved[6];
};

/* packed too, and naturally aligned as well (192 bytes) */
struct v4l2_pix_format_mplane {
    uint32_t width;
    uint32_t height;
    uint32_t pixelformat;
    uint32_t field;
    uint32_t colorspace;
    struct v4l2_plane_pix_format plane_fmt[8];  /* VIDEO_MAX_PLANES */
    uint8_t num_planes;
    uint8_t flags;
    union {
        uint8_t ycbcr_enc;
        uint8_t hsv_enc;
    };
    uint8_t quantization;
    uint8_t xfer_func;
    uint8_t reserved[7];
};

/* The header's union also has vbi, sliced, sdr and meta; all fit in raw_data[200]. */
struct v4l2_format {
    uint32_t type;
    union {
        struct v4l2_pix_format pix;
        struct v4l2_pix_format_mplane pix_mp;
        struct v4l2_window win;
        uint8_t raw_data[200];
    } fmt;
};

struct v4l2_requestbuffers {
    uint32_t count;
    uint32_t type;
    uint32_t memory;
    uint32_t capabilities;
    uint8_t flags;
    uint8_t reserved[3];
};

struct v4l2_timecode {
    uint32_t type;
    uint32_t flags;
    uint8_t frames;
    uint8_t seconds;
    uint8_t minutes;
    uint8_t hours;
    uint8_t userbits[4];
};

struct v4l2_plane {
    uint32_t bytesused;
    uint32_t length;
    union {
        uint32_t mem_offset;
        unsigned long userptr;
        int32_t fd;
    } m;
    uint32_t data_offset;
    uint32_t reserved[11];
};

struct v4l2_buffer {
    uint32_t index;
    uint32_t type;
    uint32_t bytesused;
    uint32_t flags;
    uint32_t field;
    struct timeval timestamp;
    struct v4l2_timecode timecode;
    uint32_t sequence;
    uint32_t memory;
    union {
        uint32_t offset;
        unsigned long userptr;
        struct v4l2_plane *planes;
        int32_t fd;
    } m;
    uint32_t length;
    uint32_t reserved2;
    union {
        int32_t request_fd;
        uint32_t reserved;
    };
};

struct v4l2_exportbuffer {
    uint32_t type;
    uint32_t index;
    uint32_t plane;
    uint32_t flags;
    int32_t fd;
    uint32_t reserved[11];
};
