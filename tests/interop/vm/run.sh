#!/usr/bin/env bash
# run.sh [--timeout S] [--smb] [--mem SIZE] [--verbose] -- COMMAND...
#
# Boot the interop guest (prepared by setup.sh), create soft-RoCE rxe0 on
# 10.99.1.1 and soft-iWARP siw0 on 10.99.2.1 (each on its own dummy netdev:
# the guest has no network device at all), optionally start ksmbd (user
# test/test, share "share"), run COMMAND as root in the current directory,
# power off, and exit with COMMAND's status (124: timeout, 125: no result).
# A guest that dies while booting, before COMMAND starts, is booted once more.
#
# COMMAND sees RDMA_VM_RXE_DEV/ADDR, RDMA_VM_SIW_DEV/ADDR, with --smb also
# RDMA_VM_SMB_USER/PASS/SHARE, and TMPDIR on a guest tmpfs.  The guest CPU
# is emulated (TCG) unless SMBDIRECT_VM_ACCEL=kvm.
set -uo pipefail

CACHE=${SMBDIRECT_VM_CACHE:-/var/cache/smbdirect-socket-vm}
timeout=900 mem=4G smb=0 verbose=0
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --smb) smb=1; shift ;;
    --verbose) verbose=1; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { sed -n '2,14s/^# \{0,1\}//p' "$0" >&2; exit 2; }
[ -f "$CACHE/vmlinuz" ] && [ -f "$CACHE/initramfs.cpio.gz" ] ||
  { echo "interop-vm: not set up: run $(dirname "$0")/setup.sh as root" >&2; exit 125; }

JOB=$(mktemp -d /tmp/smbdirect-vm.XXXXXX)
trap 'rm -rf "$JOB"' EXIT
printf '%q ' "$@" > "$JOB/command"
printf '%q' "$PWD" > "$JOB/cwd"
export -p > "$JOB/environment"
echo "$smb" > "$JOB/smb"
echo "$CACHE/ksmbd-tools/usr/sbin" > "$JOB/ksmbd-tools"

cat > "$JOB/guest" <<'GUEST'
# PID 1 of the guest, on the host's root filesystem.
JOB=${0%/guest}
mount -t proc proc /proc
exec </dev/null >/dev/ttyS0 2>&1
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mkdir -p /run/smbdirect-vm/tmp /run/smbdirect-vm/share /run/lock
hostname smbdirect-vm
ip link set lo up
ip link add rxenet0 mtu 9000 type dummy && ip addr add 10.99.1.1/24 dev rxenet0 && ip link set rxenet0 up
ip link add siwnet0 mtu 9000 type dummy && ip addr add 10.99.2.1/24 dev siwnet0 && ip link set siwnet0 up
rdma link add rxe0 type rxe netdev rxenet0 || echo "interop-vm: rxe0 failed"
rdma link add siw0 type siw netdev siwnet0 || echo "interop-vm: siw0 failed"
extra=""
if [ "$(cat "$JOB/smb")" = 1 ]; then
  tools=$(cat "$JOB/ksmbd-tools")
  conf=/run/smbdirect-vm/ksmbd.conf users=/run/smbdirect-vm/ksmbdpwd.db
  # Encryption off: ksmbd 6.12 answers an encrypted request over SMB-Direct with
  # the plain response while counting the 52-byte transform header in its
  # length, so the client waits for bytes that never come (impacket encrypts
  # when the server allows it).
  printf '[global]\n\tserver string = smbdirect-vm\n\tsmb3 encryption = disabled\n[share]\n\tpath = /run/smbdirect-vm/share\n\tread only = no\n\tforce user = root\n' > $conf
  "$tools/ksmbd.adduser" -c $conf -i $users -a test -p test >/dev/null || echo "interop-vm: ksmbd.adduser failed"
  "$tools/ksmbd.mountd" -c $conf -u $users || echo "interop-vm: ksmbd.mountd failed"
  extra="RDMA_VM_SMB_USER=test RDMA_VM_SMB_PASS=test RDMA_VM_SMB_SHARE=share RDMA_VM_KSMBD_CONTROL=$tools/ksmbd.control"
fi
out=/dev/null err=/dev/null
for port in /sys/class/virtio-ports/*; do
  case "$(cat "$port/name")" in out) out=/dev/${port##*/} ;; err) err=/dev/${port##*/} ;; esac
done
: > "$JOB/started"
(
  . "$JOB/environment"
  export TMPDIR=/run/smbdirect-vm/tmp RDMA_VM_RXE_DEV=rxe0 RDMA_VM_RXE_ADDR=10.99.1.1 \
    RDMA_VM_SIW_DEV=siw0 RDMA_VM_SIW_ADDR=10.99.2.1 $extra
  eval "cd $(cat "$JOB/cwd")" || exit 126
  eval "exec $(cat "$JOB/command")"
) >"$out" 2>"$err"
echo $? > "$JOB/status"
sync
echo o > /proc/sysrq-trigger
sleep 30
GUEST

if [ "${SMBDIRECT_VM_ACCEL:-tcg}" = kvm ]; then accel=(-accel kvm -cpu host)
else accel=(-accel tcg,thread=multi,tb-size=256 -cpu max); fi
start=$(date +%s)
# stdout and stderr reach qemu as pipes, so its re-opening of them never
# moves the caller's file offsets.
boot() {
{ { timeout -k 5 "$timeout" qemu-system-x86_64 -machine q35 "${accel[@]}" -m "$mem" -smp "$(nproc)" \
    -nodefaults -display none -vga none -monitor none -no-reboot -nic none \
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=4 panic=-1 smbdirect_job=$JOB" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,multidevs=remap \
    -serial "file:$JOB/console" -device virtio-serial-pci \
    -chardev file,id=out,path=/proc/self/fd/1 -device virtserialport,chardev=out,name=out \
    -chardev file,id=err,path=/proc/self/fd/2 -device virtserialport,chardev=err,name=err \
    </dev/null; echo $? > "$JOB/qemu-status"; } 2>&1 1>&3 3>&- | cat >&2; } 3>&1 | cat
}
# The emulated guest kernel very rarely dies while booting (a panic in its
# timer code was seen once): boot again then, but never once COMMAND started.
for attempt in 1 2; do
  rm -f "$JOB/started" "$JOB/status" "$JOB/qemu-status" "$JOB/console"
  boot
  [ -f "$JOB/started" ] && break  # (the guest writes status only after started)
  case "$(cat "$JOB/qemu-status" 2>/dev/null)" in 124|137) break ;; esac
  [ "$attempt" = 2 ] && break
  echo "interop-vm: the guest died while booting; booting it again. Its console said:" >&2
  grep -a -m 3 -e "Kernel panic" -e "BUG:" -e "Oops" "$JOB/console" >&2 || tail -n 15 "$JOB/console" >&2
done
grep -a "^interop-vm: " "$JOB/console" >&2
[ "$verbose" = 1 ] && { echo "---- guest console ($(( $(date +%s) - start )) s) ----" >&2; cat "$JOB/console" >&2; }
[ -f "$JOB/status" ] && exit "$(cat "$JOB/status")"
case "$(cat "$JOB/qemu-status" 2>/dev/null)" in
  124|137) echo "interop-vm: timed out after ${timeout}s" >&2; exit 124 ;;
esac
echo "interop-vm: the guest ended without a result; console tail:" >&2
tail -n 30 "$JOB/console" >&2
exit 125
