/* <linux/dma-heap.h>: allocation from /dev/dma_heap/<name>. */
#define DMA_HEAP_VALID_FD_FLAGS   0x80003   /* O_CLOEXEC | O_ACCMODE */
#define DMA_HEAP_VALID_HEAP_FLAGS 0

struct dma_heap_allocation_data {
    uint64_t len;
    uint32_t fd;        /* out; must be 0 on input */
    uint32_t fd_flags;
    uint64_t heap_flags;
};
