"""pydmabuf buffers into Vulkan: a dma-buf imported as VkDeviceMemory behind a VkBuffer, and
a frame imported as a VkImage with its explicit DRM modifier layout.

1. A buffer from the system heap (or udmabuf) gets a pattern under ``cpu_access``, is
   imported (``VK_EXT_external_memory_dma_buf``, ``VkImportMemoryFdInfoKHR``) behind a
   VkBuffer, and Vulkan's copy of it into a host buffer (``vkCmdCopyBuffer``) matches.
2. An XRGB8888 frame from ``allocate_frame`` (pitch padded to 256 bytes) becomes a
   VkImage with ``VK_IMAGE_TILING_DRM_FORMAT_MODIFIER_EXT`` and
   ``VkImageDrmFormatModifierExplicitCreateInfoEXT``: ``frame.modifier`` and
   ``frame.planes`` (offset, pitch) go in as they are. Vulkan reports that layout back
   (``vkGetImageSubresourceLayout``) and ``vkCmdCopyImageToBuffer`` gives every pixel
   as drawn. (lavapipe refuses planar formats with explicit modifiers: NV12 is not
   tried here.)

Uses the ``vulkan`` package (cffi bindings) and a Vulkan driver with those extensions,
such as Mesa's lavapipe; without them, or without real dma-bufs, it says so and exits
0 (``--require`` makes that a failure; the real-kernel tier's consumer boot has all).

    python examples/vulkan_import.py [--size 67x33] [--require]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import pydmabuf
from pydmabuf.frame import allocate_frame

EXTENSIONS = ("VK_KHR_external_memory_fd", "VK_EXT_external_memory_dma_buf", "VK_EXT_image_drm_format_modifier")


def load_vulkan() -> Any:
    try:
        import vulkan
    except (ImportError, OSError) as exc:
        return f"no Vulkan binding or loader here ({exc}; pip install vulkan, and a driver such as lavapipe)"
    return vulkan


class Device:
    """A Vulkan device with dma-buf import, one queue, a command pool."""

    def __init__(self, vk: Any) -> None:
        self.vk = vk
        app = vk.VkApplicationInfo(sType=vk.VK_STRUCTURE_TYPE_APPLICATION_INFO, pApplicationName="pydmabuf",
                                   apiVersion=vk.VK_MAKE_VERSION(1, 2, 0))
        self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, pApplicationInfo=app), None)
        self.physical = None
        for physical in vk.vkEnumeratePhysicalDevices(self.instance):
            names = {e.extensionName for e in vk.vkEnumerateDeviceExtensionProperties(physical, None)}
            if all(name in names for name in EXTENSIONS):
                self.physical = physical
                self.name = vk.vkGetPhysicalDeviceProperties(physical).deviceName
                break
        if self.physical is None:
            raise LookupError(f"no Vulkan device with {', '.join(EXTENSIONS)}")
        queue = vk.VkDeviceQueueCreateInfo(sType=vk.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, queueFamilyIndex=0,
                                           queueCount=1, pQueuePriorities=[1.0])
        self.device = vk.vkCreateDevice(self.physical, vk.VkDeviceCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, queueCreateInfoCount=1, pQueueCreateInfos=[queue],
            enabledExtensionCount=len(EXTENSIONS), ppEnabledExtensionNames=list(EXTENSIONS)), None)
        self.queue = vk.vkGetDeviceQueue(self.device, 0, 0)
        self.pool = vk.vkCreateCommandPool(self.device, vk.VkCommandPoolCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO, queueFamilyIndex=0), None)
        self.fd_properties = vk.vkGetDeviceProcAddr(self.device, "vkGetMemoryFdPropertiesKHR")
        self.memory_types = vk.vkGetPhysicalDeviceMemoryProperties(self.physical)

    def memory_type(self, bits: int, host_visible: bool) -> int:
        wanted = self.vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | self.vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        for index in range(self.memory_types.memoryTypeCount):
            flags = self.memory_types.memoryTypes[index].propertyFlags
            if bits & (1 << index) and (not host_visible or flags & wanted == wanted):
                return index
        raise LookupError(f"no memory type in bits 0x{bits:x}")

    def import_dma_buf(self, fd: int, requirements: Any) -> Any:
        """VkDeviceMemory on a dup of ``fd`` (Vulkan owns the dup once the import succeeds)."""
        vk = self.vk
        props = vk.VkMemoryFdPropertiesKHR(sType=vk.VK_STRUCTURE_TYPE_MEMORY_FD_PROPERTIES_KHR)
        self.fd_properties(self.device, vk.VK_EXTERNAL_MEMORY_HANDLE_TYPE_DMA_BUF_BIT_EXT, fd, props)
        index = self.memory_type(requirements.memoryTypeBits & props.memoryTypeBits, host_visible=False)
        dup = os.dup(fd)
        try:
            info = vk.VkImportMemoryFdInfoKHR(sType=vk.VK_STRUCTURE_TYPE_IMPORT_MEMORY_FD_INFO_KHR,
                                              handleType=vk.VK_EXTERNAL_MEMORY_HANDLE_TYPE_DMA_BUF_BIT_EXT, fd=dup)
            return vk.vkAllocateMemory(self.device, vk.VkMemoryAllocateInfo(
                sType=vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, pNext=info, allocationSize=requirements.size,
                memoryTypeIndex=index), None)
        except BaseException:
            os.close(dup)
            raise

    def host_buffer(self, size: int) -> tuple[Any, Any]:
        vk = self.vk
        buffer = vk.vkCreateBuffer(self.device, vk.VkBufferCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, size=size, usage=vk.VK_BUFFER_USAGE_TRANSFER_DST_BIT,
            sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        requirements = vk.vkGetBufferMemoryRequirements(self.device, buffer)
        memory = vk.vkAllocateMemory(self.device, vk.VkMemoryAllocateInfo(
            sType=vk.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, allocationSize=requirements.size,
            memoryTypeIndex=self.memory_type(requirements.memoryTypeBits, host_visible=True)), None)
        vk.vkBindBufferMemory(self.device, buffer, memory, 0)
        return buffer, memory

    def run(self, record: Any) -> None:
        """Record commands with ``record(command_buffer)``, submit, and wait."""
        vk = self.vk
        (command,) = vk.vkAllocateCommandBuffers(self.device, vk.VkCommandBufferAllocateInfo(
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, commandPool=self.pool,
            level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY, commandBufferCount=1))
        vk.vkBeginCommandBuffer(command, vk.VkCommandBufferBeginInfo(
            sType=vk.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO))
        record(command)
        vk.vkEndCommandBuffer(command)
        vk.vkQueueSubmit(self.queue, 1, [vk.VkSubmitInfo(sType=vk.VK_STRUCTURE_TYPE_SUBMIT_INFO,
                                                         commandBufferCount=1, pCommandBuffers=[command])], None)
        vk.vkQueueWaitIdle(self.queue)
        vk.vkFreeCommandBuffers(self.device, self.pool, 1, [command])

    def read(self, memory: Any, size: int) -> bytes:
        data = self.vk.vkMapMemory(self.device, memory, 0, size, 0)
        try:
            return bytes(data[:size])
        finally:
            self.vk.vkUnmapMemory(self.device, memory)


def import_buffer(dev: Device, size: int) -> None:
    vk = dev.vk
    with pydmabuf.Heap("system").allocate(size) as buf:
        with buf.cpu_access(), buf.map() as mapping:
            mapping[:] = bytes((i * 7 + 3) & 0xFF for i in range(size))
            drawn = bytes(mapping[:size])
        external = vk.VkExternalMemoryBufferCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO,
            handleTypes=vk.VK_EXTERNAL_MEMORY_HANDLE_TYPE_DMA_BUF_BIT_EXT)
        source = vk.vkCreateBuffer(dev.device, vk.VkBufferCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, pNext=external, size=size,
            usage=vk.VK_BUFFER_USAGE_TRANSFER_SRC_BIT, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE), None)
        memory = dev.import_dma_buf(buf.fileno(), vk.vkGetBufferMemoryRequirements(dev.device, source))
        vk.vkBindBufferMemory(dev.device, source, memory, 0)
        target, target_memory = dev.host_buffer(size)
        dev.run(lambda cmd: vk.vkCmdCopyBuffer(cmd, source, target, 1, [vk.VkBufferCopy(size=size)]))
        if dev.read(target_memory, size) != drawn:
            raise SystemExit("Vulkan's copy of the imported buffer differs from what was written")
        exporter = buf.info().exporter
    print(f"a {size}-byte {exporter} dma-buf imported into Vulkan ({dev.name}) behind a VkBuffer: "
          "vkCmdCopyBuffer gives every byte as written")


def import_image(dev: Device, width: int, height: int) -> None:
    vk = dev.vk
    with allocate_frame(width, height, "XRGB8888") as frame:
        with frame.cpu_access():
            view = frame.plane_view(0)
            for y in range(height):
                view.row(y)[:] = bytes(((x * 5 + y * 3) & 0xFF) if x % 4 != 3 else 0xFF for x in range(width * 4))
            drawn = view.tobytes()
            view.release()
        plane = frame.planes[0]
        layout = vk.VkSubresourceLayout(offset=plane.offset, size=0, rowPitch=plane.pitch, arrayPitch=0,
                                        depthPitch=0)
        explicit = vk.VkImageDrmFormatModifierExplicitCreateInfoEXT(
            sType=vk.VK_STRUCTURE_TYPE_IMAGE_DRM_FORMAT_MODIFIER_EXPLICIT_CREATE_INFO_EXT,
            drmFormatModifier=frame.modifier, drmFormatModifierPlaneCount=1, pPlaneLayouts=[layout])
        external = vk.VkExternalMemoryImageCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_IMAGE_CREATE_INFO, pNext=explicit,
            handleTypes=vk.VK_EXTERNAL_MEMORY_HANDLE_TYPE_DMA_BUF_BIT_EXT)
        image = vk.vkCreateImage(dev.device, vk.VkImageCreateInfo(
            sType=vk.VK_STRUCTURE_TYPE_IMAGE_CREATE_INFO, pNext=external, imageType=vk.VK_IMAGE_TYPE_2D,
            format=vk.VK_FORMAT_B8G8R8A8_UNORM,  # DRM XRGB8888/ARGB8888: bytes B, G, R, X/A
            extent=vk.VkExtent3D(width=width, height=height, depth=1), mipLevels=1, arrayLayers=1,
            samples=vk.VK_SAMPLE_COUNT_1_BIT, tiling=vk.VK_IMAGE_TILING_DRM_FORMAT_MODIFIER_EXT,
            usage=vk.VK_IMAGE_USAGE_TRANSFER_SRC_BIT, sharingMode=vk.VK_SHARING_MODE_EXCLUSIVE,
            initialLayout=vk.VK_IMAGE_LAYOUT_UNDEFINED), None)
        memory = dev.import_dma_buf(frame.objects[0].fileno(), vk.vkGetImageMemoryRequirements(dev.device, image))
        vk.vkBindImageMemory(dev.device, image, memory, 0)
        reported = vk.vkGetImageSubresourceLayout(dev.device, image, vk.VkImageSubresource(
            aspectMask=vk.VK_IMAGE_ASPECT_MEMORY_PLANE_0_BIT_EXT, mipLevel=0, arrayLayer=0))
        if (reported.offset, reported.rowPitch) != (plane.offset, plane.pitch):
            raise SystemExit(f"Vulkan lays the image out at offset {reported.offset}, pitch {reported.rowPitch}; "
                             f"the frame has {plane.offset}, {plane.pitch}")
        size = width * height * 4
        target, target_memory = dev.host_buffer(size)
        subresource = vk.VkImageSubresourceRange(aspectMask=vk.VK_IMAGE_ASPECT_COLOR_BIT, baseMipLevel=0,
                                                 levelCount=1, baseArrayLayer=0, layerCount=1)

        def record(cmd: Any) -> None:
            # UNDEFINED would allow discarding the contents: the image was written
            # outside Vulkan, so it starts as GENERAL (VK_QUEUE_FAMILY_FOREIGN_EXT in a
            # multi-queue-family program).
            barrier = vk.VkImageMemoryBarrier(
                sType=vk.VK_STRUCTURE_TYPE_IMAGE_MEMORY_BARRIER, srcAccessMask=0,
                dstAccessMask=vk.VK_ACCESS_TRANSFER_READ_BIT, oldLayout=vk.VK_IMAGE_LAYOUT_GENERAL,
                newLayout=vk.VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL, srcQueueFamilyIndex=vk.VK_QUEUE_FAMILY_IGNORED,
                dstQueueFamilyIndex=vk.VK_QUEUE_FAMILY_IGNORED, image=image, subresourceRange=subresource)
            vk.vkCmdPipelineBarrier(cmd, vk.VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, vk.VK_PIPELINE_STAGE_TRANSFER_BIT, 0,
                                    0, None, 0, None, 1, [barrier])
            region = vk.VkBufferImageCopy(
                bufferOffset=0, bufferRowLength=0, bufferImageHeight=0,
                imageSubresource=vk.VkImageSubresourceLayers(aspectMask=vk.VK_IMAGE_ASPECT_COLOR_BIT, mipLevel=0,
                                                             baseArrayLayer=0, layerCount=1),
                imageOffset=vk.VkOffset3D(x=0, y=0, z=0), imageExtent=vk.VkExtent3D(width=width, height=height,
                                                                                    depth=1))
            vk.vkCmdCopyImageToBuffer(cmd, image, vk.VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL, target, 1, [region])

        dev.run(record)
        if dev.read(target_memory, size) != drawn:
            raise SystemExit("Vulkan's copy of the imported image differs from the frame's pixels")
    print(f"XRGB8888 {width}x{height} frame (pitch {plane.pitch}, modifier {frame.modifier}) imported into Vulkan "
          f"as a VkImage with its explicit DRM modifier layout: vkCmdCopyImageToBuffer gives every byte as drawn")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="67x33", help="WIDTHxHEIGHT (odd sizes test the pitch)")
    parser.add_argument("--require", action="store_true", help="fail, not skip, without Vulkan or real dma-bufs")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    def nothing(reason: str) -> int:
        print(f"vulkan_import: nothing to do here: {reason}")
        return 1 if args.require else 0

    if pydmabuf.backend != "kernel":
        return nothing("no real dma-bufs (the fallback backend's memfds are not dma-bufs Vulkan can import)")
    vk = load_vulkan()
    if isinstance(vk, str):
        return nothing(vk)
    try:
        dev = Device(vk)
    except (LookupError, vk.VkError) as exc:
        return nothing(f"{exc}")
    import_buffer(dev, 65536)
    import_image(dev, width, height)
    return 0


if __name__ == "__main__":
    sys.exit(main())
