# Stay up until the VMM is stopped from outside (vm-signal scenario).
bed_report idle yes
sleep 600
