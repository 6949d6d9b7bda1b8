# The bed's own hang handling (nested_bed: a_silent_run_is_stopped_and_retried): say one
# line, then nothing until L0 is stopped, as a hung L2 would.
echo "going silent"
while :; do sleep 3600; done
