#!/bin/sh
# Used as L2's init (rdinit=/checks/vm-panic.sh), not as a check: it says where it is and
# exits, and an init that exits makes the kernel panic ("Attempted to kill init!"). The
# bed kernel has no MAGIC_SYSRQ, so this is the reliable way to get a real guest panic.
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
echo "PASSVM-L2: init up, about to exit on purpose"
exit 7
