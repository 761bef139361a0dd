/* drivers/dma-buf/sw_sync.c: debugfs software timelines. Driver-private (there is no
 * uapi header); the layout is the one igt and Android libsync copy. */
struct sw_sync_create_fence_data {
    uint32_t value;
    char name[32];
    int32_t fence;
};
