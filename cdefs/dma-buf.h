/* <linux/dma-buf.h>: CPU access bracketing, names and implicit-fence export/import
 * on any dma-buf fd. ioctl numbers are computed in pydmabuf/_ffi.py from these sizes. */
#define DMA_BUF_SYNC_READ   1
#define DMA_BUF_SYNC_WRITE  2
#define DMA_BUF_SYNC_RW     3
#define DMA_BUF_SYNC_START  0
#define DMA_BUF_SYNC_END    4
#define DMA_BUF_SYNC_VALID_FLAGS_MASK 7
#define DMA_BUF_NAME_LEN    32

struct dma_buf_sync {
    uint64_t flags;
};

struct dma_buf_export_sync_file {
    uint32_t flags;
    int32_t fd;
};

struct dma_buf_import_sync_file {
    uint32_t flags;
    int32_t fd;
};
