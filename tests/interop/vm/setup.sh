#!/usr/bin/env bash
# Prepare the interop guest: a Debian 6.12 kernel with soft-RoCE (rxe),
# soft-iWARP (siw), ksmbd and cifs.ko with SMB-Direct, booting into this
# machine's own root filesystem over virtio-9p.  Idempotent; needs root.
#
# Debian builds its kernels without CONFIG_RDMA_SIW, CONFIG_SMB_SERVER_SMBDIRECT
# and CONFIG_CIFS_SMB_DIRECT, so those three modules are rebuilt from
# linux-source-6.12 against the matching headers.
set -euo pipefail

CACHE=${SMBDIRECT_VM_CACHE:-/var/cache/smbdirect-socket-vm}
log() { echo "[interop-vm setup] $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "setup.sh must run as root" >&2; exit 1; }
mkdir -p "$CACHE"

need() {  # install the Debian packages that are missing
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && return
  log "apt-get install ${missing[*]}"
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

need qemu-system-x86 rdma-core ibverbs-utils ibverbs-providers librdmacm1 rdmacm-utils perftest \
  python3-pyverbs cifs-utils busybox-static iproute2 kmod xz-utils cpio build-essential bc flex bison \
  libelf-dev libssl-dev linux-source-6.12
need libglib2.0-0 libnl-3-200 libnl-genl-3-200  # what the unpacked ksmbd-tools (step 3) links to
version=$(dpkg-query -W -f='${Version}' linux-source-6.12)
KVER="${version%%-*}+deb12-amd64"
need "linux-image-$KVER-unsigned" "linux-headers-$KVER"
echo "$KVER" > "$CACHE/kver"
cp "/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"

# 1. siw, ksmbd and cifs with SMB-Direct, built out of tree.
MODS=$CACHE/modules
if [ ! -f "$MODS/.built-$KVER" ]; then
  SRC=$CACHE/src
  rm -rf "$SRC" "$MODS"; mkdir -p "$SRC" "$MODS"
  log "extracting fs/smb, fs/nls and siw from linux-source-6.12"
  tar -C "$SRC" --strip-components=1 -xJf /usr/src/linux-source-6.12.tar.xz --wildcards \
    'linux-source-6.12/fs/smb/*' 'linux-source-6.12/fs/nls/*' 'linux-source-6.12/drivers/infiniband/sw/siw/*' \
    'linux-source-6.12/scripts/asn1_compiler.c' 'linux-source-6.12/include/linux/asn1*.h'
  # The headers package has no asn1_compiler: build it and generate its output ahead.
  gcc -O2 -I "$SRC/include" -o "$SRC/asn1_compiler" "$SRC/scripts/asn1_compiler.c"
  for grammar in "$SRC"/fs/smb/client/*.asn1 "$SRC"/fs/smb/server/*.asn1; do
    "$SRC/asn1_compiler" "$grammar" "${grammar%.asn1}.asn1.c" "${grammar%.asn1}.asn1.h"
  done
  build() { make -s -C "/lib/modules/$KVER/build" -j"$(nproc)" M="$SRC/$1" "${@:2}" modules; }
  log "building siw.ko, ksmbd.ko and cifs.ko (a few minutes)"
  build drivers/infiniband/sw/siw CONFIG_RDMA_SIW=m
  build fs/smb/server CONFIG_SMB_SERVER=m CONFIG_SMB_SERVER_SMBDIRECT=y KCFLAGS=-DCONFIG_SMB_SERVER_SMBDIRECT=1
  build fs/smb/client CONFIG_CIFS=m CONFIG_CIFS_SMB_DIRECT=y KCFLAGS=-DCONFIG_CIFS_SMB_DIRECT=1
  for m in drivers/infiniband/sw/siw/siw.ko fs/smb/server/ksmbd.ko fs/smb/client/cifs.ko; do
    strip --strip-debug -o "$MODS/$(basename "$m")" "$SRC/$m"
  done
  rm -rf "$SRC"
  touch "$MODS/.built-$KVER"
fi

# 2. The initramfs: busybox, every module the guest needs (decompressed: the
#    guest CPU is emulated, so it should not unpack xz), and /init.
INITRD=$CACHE/initramfs.cpio.gz
if [ ! -f "$INITRD" ] || [ "$INITRD" -ot "$MODS/.built-$KVER" ] || [ "$INITRD" -ot "$0" ]; then
  log "building the initramfs"
  W=$(mktemp -d)
  mkdir -p "$W"/{bin,dev,proc,sys,newroot,mods}
  cp /bin/busybox "$W/bin/"
  for tool in sh mount umount insmod switch_root sed cat mkdir poweroff; do ln -s busybox "$W/bin/$tool"; done
  # Kernel modules in load order: those of Debian's tree with their
  # dependencies, then ours (their dependencies come from modinfo).
  ours="siw ksmbd cifs"
  wanted="9pnet_virtio 9p dummy rdma_rxe ib_uverbs rdma_ucm ib_umad"
  for m in $ours; do wanted="$wanted $(modinfo -F depends "$MODS/$m.ko" | tr ',' ' ')"; done
  : > "$W/mods/order"
  for m in $wanted; do
    modprobe -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
  done > "$W/mods.list"
  for m in $ours; do echo "$MODS/$m.ko"; done >> "$W/mods.list"
  while read -r path; do
    name=$(basename "${path%.xz}")
    grep -qxF "$name" "$W/mods/order" && continue
    case "$path" in *.xz) xz -dc "$path" > "$W/mods/$name" ;; *) cp "$path" "$W/mods/$name" ;; esac
    echo "$name" >> "$W/mods/order"
  done < "$W/mods.list"
  rm "$W/mods.list"
  cat > "$W/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap,access=client hostroot /newroot ||
  { echo "interop-vm: cannot mount the host root"; poweroff -f; }
job=$(sed -n 's/.*smbdirect_job=\([^ ]*\).*/\1/p' /proc/cmdline)
umount /dev /proc
exec switch_root /newroot /bin/bash "$job/guest"
INIT
  chmod +x "$W/init"
  (cd "$W" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$W"
fi

# 3. ksmbd's user-space daemon.  Debian's ksmbd-tools conflicts with samba,
#    which the host tests use, so it is unpacked, not installed.
if [ ! -x "$CACHE/ksmbd-tools/usr/sbin/ksmbd.mountd" ]; then
  log "unpacking ksmbd-tools"
  D=$(mktemp -d)
  (cd "$D" && apt-get download -qq ksmbd-tools 2>/dev/null)
  rm -rf "$CACHE/ksmbd-tools"
  dpkg -x "$D"/ksmbd-tools_*.deb "$CACHE/ksmbd-tools"
  rm -rf "$D"
fi
log "ready: kernel $KVER in $CACHE"
