/* <linux/sync_file.h>: explicit fences. struct sync_set_deadline (Linux 6.8) is
 * missing from older headers (6.1 on Debian 12) but its layout is fixed. */
struct sync_merge_data {
    char name[32];
    int32_t fd2;
    int32_t fence;
    uint32_t flags;
    uint32_t pad;
};

struct sync_fence_info {
    char obj_name[32];
    char driver_name[32];
    int32_t status;
    uint32_t flags;
    uint64_t timestamp_ns;
};

struct sync_file_info {
    char name[32];
    int32_t status;
    uint32_t flags;
    uint32_t num_fences;
    uint32_t pad;
    uint64_t sync_fence_info;
};

struct sync_set_deadline {
    uint64_t deadline_ns;
    uint64_t pad;
};
