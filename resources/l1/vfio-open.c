/*
 * vfio-open PATH: a VFIO user that is not passvm, for the udev-links scenario. It opens
 * a VFIO device cdev by whatever path it is given (there: /dev/vfio/pci/<BDF>, the
 * link passvm's udev rule made), binds it to a fresh iommufd as the cdev uAPI requires
 * before any other ioctl, and asks VFIO_DEVICE_GET_INFO. Prints one line:
 *   vfio-open PATH: ok flags=0x.. pci=yes|no regions=N irqs=N devid=N
 * and exits 0, or prints what failed and exits 1.
 *
 * The uAPI structures are written out here because the bed host's kernel headers
 * (bookworm's linux-libc-dev, 6.1) predate the cdev interface (Linux 6.6).
 * Built static by resources/images.sh: L1 has no libc.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* include/uapi/linux/vfio.h: VFIO_TYPE ';', VFIO_BASE 100. */
#define BED_VFIO_DEVICE_GET_INFO _IO(';', 100 + 7)
#define BED_VFIO_DEVICE_BIND_IOMMUFD _IO(';', 100 + 18)
#define BED_VFIO_DEVICE_FLAGS_PCI (1u << 1)

struct bed_vfio_device_bind_iommufd {
	uint32_t argsz;
	uint32_t flags;
	int32_t iommufd;
	uint32_t out_devid;
};

struct bed_vfio_device_info {
	uint32_t argsz;
	uint32_t flags;
	uint32_t num_regions;
	uint32_t num_irqs;
	uint32_t cap_offset;
	uint32_t pad;
};

static int fail(const char *path, const char *what)
{
	printf("vfio-open %s: %s: %s\n", path, what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: vfio-open /dev/vfio/<bus>/<name>\n");
		return 2;
	}
	const char *path = argv[1];
	int dev = open(path, O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return fail(path, "open");
	int iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (iommufd < 0)
		return fail(path, "open /dev/iommu");
	struct bed_vfio_device_bind_iommufd bind = {
		.argsz = sizeof(bind),
		.iommufd = iommufd,
	};
	if (ioctl(dev, BED_VFIO_DEVICE_BIND_IOMMUFD, &bind) < 0)
		return fail(path, "VFIO_DEVICE_BIND_IOMMUFD");
	struct bed_vfio_device_info info = { .argsz = sizeof(info) };
	if (ioctl(dev, BED_VFIO_DEVICE_GET_INFO, &info) < 0)
		return fail(path, "VFIO_DEVICE_GET_INFO");
	printf("vfio-open %s: ok flags=0x%x pci=%s regions=%u irqs=%u devid=%u\n", path,
	       info.flags, (info.flags & BED_VFIO_DEVICE_FLAGS_PCI) ? "yes" : "no",
	       info.num_regions, info.num_irqs, bind.out_devid);
	close(dev);
	close(iommufd);
	return 0;
}
