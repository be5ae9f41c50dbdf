#!/usr/bin/env bash
# The plain OpenSSH baseline that bench/run.py times scmflow against: the remote steps of an
# upgrade (stop, copy a backup, untar, start the nodes, check the version) run in sequence,
# over one multiplexed ControlMaster connection per host, with no state kept and no checks
# beyond the last step's. Packages go first, to every host at once, with scp.
#
# usage: baseline.sh PLAN PARALLEL KEY KNOWN_HOSTS [LOGIN_USER]
#
# PLAN has one line per (host, service) pair, stages in order, fields separated by "|":
#   stage|host|service|dir|ctl|stop args|ports|daemon (0/1)|local package|replace globs|
#   version glob|new version
# Pairs of one stage run PARALLEL at a time; a stage starts when the one before is done.
set -euo pipefail
# no pathname expansion here: the replace globs are expanded on the hosts
set -f

plan=$1 parallel=$2 key=$3 known=$4 login=${5:-root}
install=/opt/sequoiacm
upgrade=/opt/upgrade/baseline
backup=/opt/backup/baseline
owner=scmadmin
mux=$(mktemp -d)
ssh_opts=(-i "$key" -o UserKnownHostsFile="$known" -o BatchMode=yes -o ControlPath="$mux/%h")
mapfile -t hosts < <(cut -d'|' -f2 "$plan" | sort -u)

close_masters() {
    for host in "${hosts[@]}"; do
        ssh "${ssh_opts[@]}" -O exit "$login@$host" 2>/dev/null || true
    done
    rm -rf "$mux"
}
trap close_masters EXIT

for host in "${hosts[@]}"; do
    ssh "${ssh_opts[@]}" -o ControlMaster=yes -o ControlPersist=yes -fN "$login@$host"
done

# Run a shell command on a host as the install user, with the JDK's bin first on PATH as the
# vendor's upgrader sets it (the ctl starts nodes with the first `java` on PATH).
as_owner() {
    local host=$1 command=$2
    ssh "${ssh_opts[@]}" "$login@$host" \
        "sudo -u $owner -H env JAVA_HOME=/opt/java PATH=/opt/java/bin:/usr/bin:/bin sh -c $(printf '%q' "$command")"
}

send_packages() {
    local host=$1
    local -a files
    mapfile -t files < <(awk -F'|' -v h="$host" '$2 == h { print $9 }' "$plan" | sort -u)
    ssh "${ssh_opts[@]}" "$login@$host" "mkdir -p $upgrade $backup && chown $owner $upgrade $backup"
    scp -q "${ssh_opts[@]}" "${files[@]}" "$login@$host:$upgrade/"
    ssh "${ssh_opts[@]}" "$login@$host" "chown -R $owner $upgrade"
}

upgrade_pair() {
    local host=$1 service=$2 dir=$3 ctl=$4 stop_args=$5 ports=$6 daemon=$7 package=$8
    local replace=$9 version_glob=${10} version=${11}
    local here=$install${dir:+/$dir} saved=$backup/$service
    local members="" glob start="" check port
    for glob in $replace; do members+=" '${dir:+$dir/}$glob'"; done
    if [ -n "$ctl" ]; then
        as_owner "$host" "cd $here && bin/$ctl $stop_args"
    fi
    as_owner "$host" "mkdir -p $saved && cd $here && cp -a --parents $replace $saved/"
    as_owner "$host" "cd $here && rm -rf $replace && tar xzf $upgrade/$(basename "$package") -C $install --wildcards $members"
    for port in $ports; do start+="bin/$ctl start --timeout 300 -p $port && "; done
    if [ "$daemon" = 1 ]; then start+="bin/$ctl start && "; fi
    if [ -n "$start" ]; then
        as_owner "$host" "cd $here && ${start}true"
    fi
    check="ls $version_glob | grep -q -- '-$version'"
    for port in $ports; do check+=" && bin/$ctl list -m local | grep -q '($port) *([0-9]'"; done
    if [ "$daemon" = 1 ]; then check+=" && bin/$ctl status >/dev/null"; fi
    as_owner "$host" "cd $here && $check"
}

failed=0
pids=()
for host in "${hosts[@]}"; do
    send_packages "$host" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { echo "baseline: sending packages failed" >&2; exit 1; }

# Pairs run as background jobs even one at a time: a function called in an `||` list would
# run with `set -e` switched off, and a failed step would not stop its pair.
run_stage() {
    local running=0 line
    local -a f
    for line in "$@"; do
        IFS='|' read -r -a f <<<"$line"
        upgrade_pair "${f[@]:1}" &
        running=$((running + 1))
        if [ "$running" -ge "$parallel" ]; then
            wait -n || failed=1
            running=$((running - 1))
        fi
    done
    while [ "$running" -gt 0 ]; do
        wait -n || failed=1
        running=$((running - 1))
    done
}

mapfile -t stages < <(cut -d'|' -f1 "$plan" | uniq)
for stage in "${stages[@]}"; do
    mapfile -t lines < <(awk -F'|' -v s="$stage" '$1 == s' "$plan")
    run_stage "${lines[@]}"
    [ "$failed" = 0 ] || { echo "baseline: stage $stage failed" >&2; exit 1; }
done
