# `passvm devices` in L1: the disk "d0" bound to vfio-pci must be listed as
# assignable, the disk "d1" left on virtio-pci as not, with `passvm bind` as
# the fix. Markers: row_d0/row_d1 (table rows), fix_d1, json_* facts.

b0="$(bed_bdf d0)"
b1="$(bed_bdf d1)"
bed_bind_vfio "$b0"
bed_report driver_d1 "$(bed_driver "$b1")"

table="$("$PASSVM" devices 2>&1)"
bed_report devices_rc "$?"
echo "$table" | sed 's/^/    /'
bed_report row_d0 "$(echo "$table" | grep "^$b0 ")"
bed_report row_d1 "$(echo "$table" | grep "^$b1 ")"
bed_report fix_d1 "$(echo "$table" | grep -A 4 "^$b1 " | grep -m 1 'fix:' | sed 's/^ *//')"
bed_report reason_d1 "$(echo "$table" | grep -A 4 "^$b1 " | grep -m 1 '^ *- ' | sed 's/^ *- //')"
bed_report hidden "$(echo "$table" | grep -c 'hidden; --all shows them')"
all="$("$PASSVM" devices --all 2>&1)"
bed_report all_host_bridge "$(echo "$all" | grep -c 'Host bridge')"
bed_report table_host_bridge "$(echo "$table" | grep -c 'Host bridge')"

json="$("$PASSVM" devices --json 2>&1)"
bed_report json_rc "$?"
echo "$json" | sed 's/^/    /'
bed_report json_assignable_true "$(echo "$json" | grep -c '"assignable": true')"
bed_report json_name_d0 "$(echo "$json" | grep -c "\"name\": \"$b0\"")"
bed_report json_not_vfio "$(echo "$json" | grep -c '"kind": "not-vfio-driver"')"
exit 0
