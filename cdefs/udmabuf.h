/* <linux/udmabuf.h>: dma-bufs made from sealed memfd pages via /dev/udmabuf. */
#define UDMABUF_FLAGS_CLOEXEC 1

struct udmabuf_create {
    uint32_t memfd;
    uint32_t flags;
    uint64_t offset;
    uint64_t size;
};

struct udmabuf_create_item {
    uint32_t memfd;
    uint32_t __pad;
    uint64_t offset;
    uint64_t size;
};

struct udmabuf_create_list {
    uint32_t flags;
    uint32_t count;
    struct udmabuf_create_item list[];
};
