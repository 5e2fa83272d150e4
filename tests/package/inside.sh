#!/bin/bash
# inside.sh — the checks of tests/package/run, run by sluice-pkgtest.service inside the
# booted Debian 12 container (real systemd as PID 1, sluice already installed with apt).
# Each check appends "pass NAME" or "fail NAME REASON" to /out/results; the log of every
# command goes to /out/inside.log. The container powers off at the end.
set -u

OUT=/out
T=/root/sluice-test          # the .debs and the test model, put there by tests/package/run
RES=$OUT/results
CONF=/etc/sluice/sluice.conf
HTTP=http://127.0.0.1:9464
WHY=

log() { echo "[$(date +%T.%3N)] $*"; }

# check NAME FUNCTION: runs FUNCTION, records its outcome. A function fails by returning
# non-zero after `why` has said what went wrong.
check() {
        local name=$1
        WHY=
        log "---- $name"
        if "$2"; then
                echo "pass $name" >>"$RES"
                log "pass $name"
        else
                echo "fail $name ${WHY:-failed}" >>"$RES"
                log "FAIL $name: ${WHY:-failed}"
        fi
}
why() { WHY="$*"; log "why: $*"; return 1; }
# expect TEXT REGEX REASON: TEXT has a line matching REGEX (grep -E), else fail with REASON
expect() { grep -qE -- "$2" <<<"$1" || why "$3"; }

# wait_for SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_for() {
        local end=$(($(date +%s%N) + $1 * 1000000000))
        shift
        until "$@" >/dev/null 2>&1; do
                [ "$(date +%s%N)" -lt "$end" ] || return 1
                sleep 0.1
        done
}

main_pid() { systemctl show -p MainPID --value sluice.service; }
prop() { systemctl show -p "$1" --value sluice.service; }
is_active() { [ "$(systemctl is-active sluice.service)" = active ]; }
is_inactive() { [ "$(systemctl is-active sluice.service)" = inactive ]; }
live_requests() { curl -m 5 -fsS "$HTTP/metrics" | awk '$1 == "sluice_live_requests" { print $2 }'; }
in_flight() { [ "$(live_requests)" -ge 1 ] 2>/dev/null; }
# journal lines of the unit since the check began (cursor from mark_journal)
mark_journal() { SINCE=$(date '+%Y-%m-%d %H:%M:%S'); sleep 1; }
journal_has() { journalctl -q --no-pager -u sluice.service --since "$SINCE" | grep -qF -- "$1"; }
# limit_is N: the server refuses N+1 tokens as over the limit of N
limit_is() { sluice generate -n $(($1 + 1)) x 2>&1 | grep -q "max_tokens $(($1 + 1)) is over the limit of $1"; }
set_key() { # set_key KEY VALUE: uncomment or replace "KEY = ..." (keys are unique in the file)
        sed -i -E "s|^;?$1 = .*|$1 = $2|" "$CONF"
        grep -q "^$1 = $2\$" "$CONF"
}

# ---- the package as installed ----

check_installed() {
        local pw
        pw=$(getent passwd sluice) || why "no user sluice (sysusers.d)" || return 1
        log "passwd: $pw"
        case $pw in *:/var/lib/sluice:/usr/sbin/nologin) ;; *) why "user sluice: $pw"; return 1 ;; esac
        local d want got
        for d in "/run/sluice sluice:sluice:750" "/var/lib/sluice sluice:sluice:750" \
                 "/var/lib/sluice/models sluice:sluice:750" "/var/log/sluice sluice:adm:2750"; do
                want=${d#* }; d=${d%% *}
                got=$(stat -c %U:%G:%a "$d" 2>/dev/null) || { why "$d missing (tmpfiles.d)"; return 1; }
                [ "$got" = "$want" ] || { why "$d is $got, not $want"; return 1; }
        done
        local cf
        cf=$(dpkg-query -W -f='${Conffiles}' sluice)
        log "conffiles:$cf"
        grep -q "^ /etc/sluice/sluice.conf " <<<"$cf" || why "sluice.conf is not a conffile" || return 1
        grep -q "^ /etc/logrotate.d/sluice " <<<"$cf" || why "the logrotate file is not a conffile" || return 1
        local f
        for f in /usr/sbin/sluiced /usr/bin/sluice /usr/bin/sluice-run /usr/bin/sluice-gguf \
                 /usr/share/man/man8/sluiced.8.gz /usr/share/man/man1/sluice.1.gz \
                 /usr/share/man/man1/sluice-run.1.gz /usr/share/man/man5/sluice.conf.5.gz \
                 /usr/share/bash-completion/completions/sluice /usr/share/doc/sluice/operations.md \
                 /usr/share/doc/sluice/examples/dpdk.conf; do
                [ -e "$f" ] || { why "$f missing"; return 1; }
        done
        # installed, not enabled, not started: it needs a model first
        [ "$(systemctl is-enabled sluice.service)" = disabled ] || why "enabled on install" || return 1
        [ "$(systemctl is-active sluice.service)" = inactive ] || why "started on install" || return 1
        # libsluice-dev: its Depends bring what its pkg-config file requires
        pkg-config --cflags --libs sluice || why "pkg-config sluice: $(pkg-config --libs sluice 2>&1)" || return 1
        pkg-config --static --libs sluice || why "pkg-config --static sluice fails" || return 1
        sluiced --version || why "sluiced --version failed" || return 1
        sluiced --check-config || why "the shipped configuration is invalid" || return 1
}

check_unit_verify() {
        local v
        v=$(systemd-analyze verify sluice.service 2>&1)
        log "systemd-analyze verify: ${v:-(nothing)}"
        # man is not installed in the container, so Documentation=man: links cannot resolve
        v=$(grep -v "Command 'man " <<<"$v" | grep -v '^$')
        [ -z "$v" ] || why "systemd-analyze verify: $v"
}

check_security() {
        local out level
        out=$(systemd-analyze security --no-pager sluice.service 2>&1)
        echo "$out"
        echo "$out" >"$OUT/security.txt"
        level=$(sed -n 's/.*Overall exposure level for sluice.service: \([0-9.]*\).*/\1/p' <<<"$out")
        [ -n "$level" ] || why "no exposure level in systemd-analyze security's output" || return 1
        echo "$level" >"$OUT/exposure"
        awk -v l="$level" 'BEGIN { exit !(l <= 5.0) }' || why "exposure level $level is above 5.0"
}

# ---- start, serve ----

check_start() {
        install -m 0644 "$T/model.gguf" /var/lib/sluice/models/model.gguf
        # An operator's edit of the conffile (kept across upgrades below); one thread keeps
        # the long requests of the reload and drain checks in flight long enough.
        set_key threads 1 || why "cannot edit $CONF" || return 1
        systemctl start sluice.service || why "systemctl start failed: $(systemctl status sluice --no-pager -n 5)" || return 1
        is_active || why "not active after start: $(systemctl is-active sluice.service)" || return 1
        local st pid
        st=$(systemctl status sluice.service --no-pager -n 0)
        echo "$st"
        grep -q 'Status: "serving ' <<<"$st" || why "systemctl status shows no 'serving' STATUS line" || return 1
        pid=$(main_pid)
        # the sandbox: the user sluice, no capabilities, no new privileges, seccomp on
        local status
        status=$(cat "/proc/$pid/status")
        grep -E '^(Uid|Gid|CapEff|CapBnd|NoNewPrivs|Seccomp):' <<<"$status"
        expect "$status" "^Uid:\s+$(id -u sluice)\s" "sluiced does not run as sluice" || return 1
        expect "$status" '^CapEff:\s+0+$' "sluiced has capabilities" || return 1
        expect "$status" '^CapBnd:\s+0+$' "the bounding set is not empty" || return 1
        expect "$status" '^NoNewPrivs:\s+1$' "NoNewPrivs is off" || return 1
        expect "$status" '^Seccomp:\s+2$' "no seccomp filter" || return 1
        # and io_uring works under SystemCallFilter= (the transports and storage use it)
        local rings
        rings=$(find "/proc/$pid/fd" -lname 'anon_inode:\[io_uring\]' | wc -l)
        log "io_uring instances: $rings"
        [ "$rings" -ge 1 ] || why "sluiced has no io_uring instance under the seccomp filter" || return 1
}

check_generate() {
        local out
        out=$(sluice generate -n 16 --temp 0 "The quick brown fox" 2>&1) || why "sluice generate (udp): $out" || return 1
        echo "$out"
        grep -q "generated 16 tokens" <<<"$out" || why "udp: not 16 tokens: $out" || return 1
        out=$(sluice --tcp generate -n 8 --temp 0 "The quick brown fox" 2>&1) || why "sluice --tcp generate: $out" || return 1
        grep -q "generated 8 tokens" <<<"$out" || why "tcp: not 8 tokens: $out" || return 1
        sluice info | grep -q "^model: tiny llama" || why "sluice info: not the test model" || return 1
        out=$(curl -m 5 -sS -w '%{http_code}' -o "$OUT/health" "$HTTP/health")
        [ "$out" = 200 ] && [ "$(cat "$OUT/health")" = ready ] || why "/health: $out $(cat "$OUT/health")" || return 1
        curl -m 5 -fsS "$HTTP/metrics" | grep -q '^sluice_requests_total{outcome="length"} 2$' ||
                why "/metrics does not count the 2 requests" || return 1
}

check_journal() {
        # the daemon's own entries carry structured fields (sd_journal_sendv), not stderr lines
        local rec
        rec=$(journalctl -u sluice.service SYSLOG_IDENTIFIER=sluiced -o export --no-pager |
              awk -v RS= '/\nMESSAGE=serving / { print; exit }')
        echo "$rec" | grep -E '^(MESSAGE|PRIORITY|CODE_FILE|CODE_LINE|CODE_FUNC|_SYSTEMD_UNIT)='
        [ -n "$rec" ] || why "no structured 'serving' entry in the journal" || return 1
        expect "$rec" '^PRIORITY=5$' "the serving entry has no PRIORITY=5" || return 1
        expect "$rec" '^CODE_FILE=.*main\.c$' "no CODE_FILE" || return 1
        expect "$rec" '^CODE_LINE=[0-9]+$' "no CODE_LINE" || return 1
        expect "$rec" '^CODE_FUNC=main$' "no CODE_FUNC" || return 1
        expect "$rec" '^_SYSTEMD_UNIT=sluice.service$' "not attributed to sluice.service" || return 1
}

# ---- reload ----

# The long requests of the reload and drain checks go over TCP: a UDP stream whose client
# falls a whole window (64 frames) behind in acknowledging is cancelled by design
# (docs/protocol.md), which a CLI starved of CPU on a loaded machine did once here. What
# is checked (the request survives the reload, the drain lets it finish) does not depend
# on the transport.
check_reload() {
        local pid bg out
        pid=$(main_pid)
        mark_journal
        sluice --tcp generate -n 1500 --temp 1 --seed 5 "Once upon a time" >"$OUT/reload.out" 2>"$OUT/reload.err" &
        bg=$!
        wait_for 10 in_flight || why "the long request never showed in sluice_live_requests" || return 1
        set_key max_new_tokens 3000 || why "cannot edit $CONF" || return 1
        systemctl reload sluice.service || why "systemctl reload failed" || return 1
        kill -0 "$bg" 2>/dev/null || why "the long request ended before the reload: cannot tell if it survived" || return 1
        # ExecReload sends SIGHUP and returns; the daemon answers RELOADING=1 ... READY=1
        wait_for 10 journal_has "reloaded: 1 changed key(s): limits.max_new_tokens" ||
                why "no 'reloaded: 1 changed key(s): limits.max_new_tokens' in the journal" || return 1
        limit_is 3000 || why "the new limit is not in force: $(sluice generate -n 3001 x 2>&1)" || return 1
        wait "$bg" || why "the request in flight during the reload failed: $(cat "$OUT/reload.err")" || return 1
        cat "$OUT/reload.err"
        grep -q "finish length, .* generated 1500 tokens" "$OUT/reload.err" ||
                why "the request in flight did not get its 1500 tokens: $(cat "$OUT/reload.err")" || return 1
        [ "$(main_pid)" = "$pid" ] || why "the reload restarted the daemon" || return 1
        is_active || why "not active after the reload"
}

check_reload_rejected() {
        local pid
        pid=$(main_pid)
        mark_journal
        set_key max_running 32 || why "cannot edit $CONF" || return 1
        systemctl reload sluice.service || why "systemctl reload failed" || return 1
        wait_for 10 journal_has "reload rejected" ||
                why "no 'reload rejected' line in the journal" || return 1
        journal_has "[engine] max_running changed" || why "the rejection does not name [engine] max_running" || return 1
        sed -i 's|^max_running = 32$|;max_running = 64|' "$CONF"
        [ "$(main_pid)" = "$pid" ] && is_active || why "the rejected reload stopped the daemon" || return 1
        limit_is 3000 || why "the old configuration did not stay: $(sluice generate -n 3001 x 2>&1)" || return 1
        sluice generate -q -n 4 x >/dev/null || why "not serving after a rejected reload"
}

# ---- watchdog ----

restarted_from() { [ "$(main_pid)" != "$1" ] && is_active; }

check_watchdog() {
        local pid n0 wd
        pid=$(main_pid)
        n0=$(prop NRestarts)
        wd=$(prop WatchdogUSec)
        log "MainPID $pid, NRestarts $n0, WatchdogUSec $wd"
        mark_journal
        kill -STOP "$pid"
        # WatchdogSec=30s, then SIGABRT, then RestartSec=5s
        if ! wait_for 90 restarted_from "$pid"; then
                kill -CONT "$pid" # so that the checks after this one find a live daemon
                why "not restarted within 90 s of SIGSTOP (state $(systemctl is-active sluice.service))"
                return 1
        fi
        journal_has "sluice.service: Watchdog timeout" || why "the journal has no watchdog timeout" || return 1
        [ "$(prop NRestarts)" = $((n0 + 1)) ] || why "NRestarts $(prop NRestarts), expected $((n0 + 1))" || return 1
        [ ! -e "/proc/$pid" ] || why "the stopped process $pid is still there" || return 1
        sluice generate -q -n 4 x >/dev/null || why "not serving after the watchdog restart"
}

# ---- stop drains ----

check_drain() {
        local bg out rc
        mark_journal
        sluice --tcp generate -n 1500 --temp 1 --seed 9 "Once upon a time" >"$OUT/drain.out" 2>"$OUT/drain.err" &
        bg=$!
        wait_for 10 in_flight || why "the long request never showed in sluice_live_requests" || return 1
        systemctl stop --no-block sluice.service
        wait_for 10 journal_has "stopping: draining 1 in-flight request(s)" ||
                why "no 'draining 1 in-flight request(s)' line" || return 1
        # a new request during the drain is refused as busy (exit 4: SHUTTING_DOWN)
        out=$(sluice generate -n 4 x 2>&1); rc=$?
        [ $rc = 4 ] || why "a request during the drain: exit $rc, not 4: $out" || return 1
        kill -0 "$bg" 2>/dev/null || why "the long request ended before the drain could be seen" || return 1
        wait "$bg" || why "the request in flight at stop failed: $(cat "$OUT/drain.err")" || return 1
        cat "$OUT/drain.err"
        grep -q "finish length, .* generated 1500 tokens" "$OUT/drain.err" ||
                why "the drained request did not get its 1500 tokens: $(cat "$OUT/drain.err")" || return 1
        wait_for 60 is_inactive ||
                why "not inactive 60 s after stop: $(systemctl is-active sluice.service)" || return 1
        [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] ||
                why "stop: Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus)" || return 1
        journal_has "stopped" || why "no 'stopped' line"
}

# ---- an invalid configuration ----

BAD_REASON="[limits] max_new_tokens: 'abc' is not a number"
status_shows() { systemctl status sluice.service --no-pager -l -n 10 | grep -qF "$1"; }

check_invalid_config() {
        local st
        systemctl stop sluice.service
        cp "$CONF" "$OUT/sluice.conf.good"
        set_key max_new_tokens abc || why "cannot edit $CONF" || return 1
        if systemctl start sluice.service; then
                why "systemctl start succeeded with an invalid configuration"
                cp "$OUT/sluice.conf.good" "$CONF"
                return 1
        fi
        # journald may take a moment to store the daemon's last stderr line
        wait_for 5 status_shows "$BAD_REASON"
        st=$(systemctl status sluice.service --no-pager -l -n 10)
        echo "$st"
        cp "$OUT/sluice.conf.good" "$CONF"
        grep -qF "$BAD_REASON" <<<"$st" || why "systemctl status does not show the reason" || return 1
        ! is_active || why "active with an invalid configuration" || return 1
        [ "$(prop ExecMainStatus)" = 78 ] && [ "$(systemctl is-active sluice.service)" = failed ] ||
                why "not failed with status 78 (no restart): $(prop ExecMainStatus) $(systemctl is-active sluice.service)" || return 1
        systemctl stop sluice.service
        systemctl reset-failed sluice.service
        systemctl start sluice.service && is_active || why "no start after the configuration was fixed"
}

# ---- upgrade ----

conf_sum() { md5sum "$CONF" | cut -d' ' -f1; }

check_upgrade() {
        local sum pid deb ver
        is_active || systemctl start sluice.service
        grep -q '^threads = 1$' "$CONF" && grep -q '^max_new_tokens = 3000$' "$CONF" ||
                why "the conffile is not edited before the upgrade" || return 1
        sum=$(conf_sum)
        for deb in "$T"/sluice_0.1.0_amd64.deb "$T"/sluice_*+pkgtest*_amd64.deb; do
                pid=$(main_pid)
                log "installing $deb over $(dpkg-query -W -f='${Version}' sluice)"
                DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall "$deb" </dev/null ||
                        why "apt-get install $deb failed" || return 1
                ver=$(dpkg-query -W -f='${Version}' sluice)
                [ "$(conf_sum)" = "$sum" ] || why "$deb changed the edited conffile" || return 1
                ls /etc/sluice
                ! ls /etc/sluice/*.dpkg-* 2>/dev/null || why "$deb left dpkg conffile copies" || return 1
                is_active || why "not active after installing $deb" || return 1
                # a running service is restarted onto the new binary
                [ "$(main_pid)" != "$pid" ] || why "not restarted by installing $deb" || return 1
                sluice generate -q -n 4 x >/dev/null || why "not serving after installing $deb" || return 1
        done
        case $ver in *+pkgtest*) ;; *) why "version after the upgrade: $ver"; return 1 ;; esac
}

# ---- purge ----

check_purge() {
        local p
        is_active || systemctl start sluice.service
        is_active || why "not active before the purge" || return 1
        DEBIAN_FRONTEND=noninteractive apt-get purge -y sluice </dev/null || why "apt-get purge failed" || return 1
        for p in /proc/[0-9]*; do
                [ "$(cat "$p/comm" 2>/dev/null)" != sluiced ] || why "sluiced still runs as ${p#/proc/}" || return 1
        done
        for p in /var/lib/sluice /var/log/sluice /run/sluice /etc/sluice /lib/systemd/system/sluice.service; do
                [ ! -e "$p" ] || why "$p is left after purge" || return 1
        done
        [ -z "$(dpkg-query -W -f='${Status}' sluice 2>/dev/null | grep -v not-installed)" ] ||
                why "dpkg still knows sluice: $(dpkg-query -W -f='${Status}' sluice)" || return 1
        [ "$(systemctl is-active sluice.service)" != active ] || why "the unit is still active"
}

exec >>"$OUT/inside.log" 2>&1
log "systemd $(systemctl --version | head -1), $(systemctl is-system-running)"
check installed check_installed
check unit_verify check_unit_verify
check security check_security
check start check_start
check generate check_generate
check journal check_journal
check reload check_reload
check reload_rejected check_reload_rejected
check watchdog check_watchdog
check drain check_drain
check invalid_config check_invalid_config
check upgrade check_upgrade
check purge check_purge
log "---- journal of sluice.service"
journalctl -u sluice.service --no-pager -o short-precise
echo done >"$OUT/finished"
systemctl poweroff --no-block
