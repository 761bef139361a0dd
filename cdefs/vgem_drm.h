/* <drm/vgem_drm.h>: software fences on vgem buffers, the source of real unsignaled
 * fences on kernels without sw_sync. */
#define VGEM_FENCE_WRITE 1

struct drm_vgem_fence_attach {
    uint32_t handle;
    uint32_t flags;
    uint32_t out_fence;
    uint32_t pad;
};

struct drm_vgem_fence_signal {
    uint32_t fence;
    uint32_t flags;
};
