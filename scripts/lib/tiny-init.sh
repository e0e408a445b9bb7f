#!/bin/busybox sh
# /init of the `tiny` image: Debian's kernel with a busybox userland. It
# reads the cloud-init NoCloud seed stratus attaches (hostname, static
# addresses and routes, user data), applies it, prints what it applied on
# the serial console, and runs a user-data script (`#!/bin/sh`) if given.
# It powers off on an ACPI power-button press, unless the user data runs
# `touch /run/ignore-acpi` (a guest that ignores ACPI, for stop tests).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /run /tmp /seed
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r module; do
    insmod "/modules/$module" 2>/dev/null
done </modules.order
echo "stratus-tiny: booted kernel $(uname -r)"

for device in /dev/sr0 /dev/sr1 /dev/hdc /dev/hdd; do
    [ -b "$device" ] && mount -t iso9660 -o ro "$device" /seed 2>/dev/null && break
done
if [ -f /seed/meta-data ]; then
    name=$(sed -n 's/^local-hostname: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /seed/meta-data)
    hostname "$name"
    echo "stratus-tiny: hostname=$name"
    nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
    ip link set lo up
    ip link set "$nic" up
    for address in $(sed -n 's/^ *- *"\{0,1\}\([0-9a-fA-F.:]*\/[0-9]*\)"\{0,1\} *$/\1/p' /seed/network-config); do
        ip addr add "$address" dev "$nic" && echo "stratus-tiny: address=$address"
    done
    for gateway in $(sed -n 's/^ *via: *"\{0,1\}\([0-9a-fA-F.:]*\)"\{0,1\} *$/\1/p' /seed/network-config); do
        case "$gateway" in
        *:*) ip -6 route add "$gateway" dev "$nic" && ip -6 route add default via "$gateway" dev "$nic" ;;
        *) ip route add default via "$gateway" dev "$nic" ;;
        esac
        echo "stratus-tiny: gateway=$gateway"
    done
    keys=$(grep -c 'ssh-\|ecdsa-' /seed/meta-data)
    echo "stratus-tiny: ssh-keys=$keys"
else
    echo "stratus-tiny: no seed found"
fi

# ACPI power button: the kernel reports it as an input event.
(
    while :; do
        for event in /dev/input/event*; do
            [ -c "$event" ] || continue
            if grep -qs "Power Button" "/sys/class/input/$(basename "$event")/device/name"; then
                # Any bytes on the power button's event device mean a press.
                dd if="$event" bs=24 count=1 2>/dev/null | wc -c >/dev/null
                if [ -e /run/ignore-acpi ]; then
                    echo "stratus-tiny: ignoring ACPI power button"
                else
                    echo "stratus-tiny: ACPI power button, powering off"
                    sync
                    poweroff -f
                fi
            fi
        done
        sleep 1
    done
) &

if head -n 1 /seed/user-data 2>/dev/null | grep -q '^#!'; then
    cp /seed/user-data /tmp/user-data
    chmod +x /tmp/user-data
    echo "stratus-tiny: running user-data"
    /tmp/user-data 2>&1
    echo "stratus-tiny: user-data exited $?"
fi
echo "stratus-tiny: ready"
while :; do sleep 3600; done
