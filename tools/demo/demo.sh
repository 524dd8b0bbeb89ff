#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The field-visit demo: a key inspection recorded offline on three tablets,
# synced through fieldsyncd over TLS, each tablet seeing only what its
# user's role and visit assignments allow, a conflict on a requirement
# resolved at head office, the replicas converging, and the Expert by
# Experience's tablet clearing the visit when their assignment ends. Uses only the real
# binaries, plus the openssl command to make a throwaway CA for the server.
# Usage: tools/demo/demo.sh BUILD_DIR
set -euo pipefail

build=${1:?usage: demo.sh BUILD_DIR}
fsd="$build/server/fieldsyncd"
adm="$build/server/fieldsync-admin"
cli="$build/client/fieldsync"
for b in "$fsd" "$adm" "$cli"; do
  [ -x "$b" ] || { echo "demo: $b is not built" >&2; exit 1; }
done
command -v openssl >/dev/null ||
  { echo "demo: the openssl command is needed to make the demo's CA" >&2; exit 1; }

work=$(mktemp -d /tmp/fieldsync-demo.XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted; stopping the server"; exit 130' INT TERM

if [ -t 1 ]; then
  say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  say() { printf '\n== %s\n' "$*"; }
fi
note() { printf '   %s\n' "$*"; }

say "Head office makes a throwaway CA and a certificate for the server"
# A real deployment uses its organisation's CA; this one lives and dies
# with the demo's temporary directory. EC P-256 keys, a CA valid for a day,
# and a server certificate for the address the tablets dial (127.0.0.1).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$work/ca.key" -out "$work/ca.pem" -days 1 \
  -subj "/CN=fieldsync demo CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$work/server.key" -out "$work/server.csr" \
  -subj "/CN=127.0.0.1" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$work/server.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" \
  -CAkey "$work/ca.key" -CAcreateserial -days 1 -sha256 \
  -extfile "$work/server.ext" -out "$work/server.pem" 2>/dev/null
note "CA $work/ca.pem; server certificate for IP 127.0.0.1 and localhost"

say "Head office starts the sync server (fieldsyncd, TLS) on this machine"
"$fsd" --db "$work/server.db" --listen 127.0.0.1:0 \
  --tls-cert "$work/server.pem" --tls-key "$work/server.key" \
  >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 200); do
  grep -q '^listening on ' "$work/server.out" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.05
done
addr=$(sed -n 's/^listening on //p' "$work/server.out")
[ -n "$addr" ] || { echo "demo: server did not start" >&2; exit 1; }
note "listening on $addr with TLS (server database: $work/server.db)"

say "Head office registers the team, each with one device token"
"$adm" --db "$work/server.db" user add lead --role inspector
"$adm" --db "$work/server.db" user add second --role inspector
"$adm" --db "$work/server.db" user add expert --role expert
"$adm" --db "$work/server.db" user add office --role head_office
declare -A token
for u in lead second expert office; do
  token[$u]=$("$adm" --db "$work/server.db" device add "$u")
  "$cli" --db "$work/$u.db" init --name "$u" >/dev/null
done
note "lead inspector, second inspector, Expert by Experience, head office"
note "four replicas, each a local SQLite database with its own replica id"

count() { # count JSON-ARRAY-TEXT: records in it
  printf '%s' "$1" | { grep -o '"collection"' || true; } | wc -l
}

sync() { # sync USER: exit status 3 (some records refused) is expected
  local rc=0
  printf '   %-7s ' "$1"
  FIELDSYNC_TOKEN=${token[$1]} "$cli" --db "$work/$1.db" sync \
    --server "$addr" --ca "$work/ca.pem" 2>"$work/sync.err" || rc=$?
  if [ "$rc" -eq 3 ]; then
    sed 's/^fieldsync: sync: /           /' "$work/sync.err"
  elif [ "$rc" -ne 0 ]; then
    cat "$work/sync.err" >&2
    exit "$rc"
  fi
}

records() { # records USER: "N records" held on USER's tablet
  count "$("$cli" --db "$work/$1.db" list --json)"
}

say "Head office sets up the service and schedules a key unannounced visit"
service=$("$cli" --db "$work/office.db" add service name="Rosebank House" \
  provider="Rosebank Care Ltd" sector=private council="Council X" places=32 \
  registration_categories=OP rating_stars=1)
visit=$("$cli" --db "$work/office.db" add visit service_id="$service" \
  kind=key announced=false planned_date=2008-12-09 lead_inspector=lead \
  inspectors=lead inspectors=second experts=expert status=planned \
  methods=case_tracking methods=SOFI methods=EbE)
note "service $service, visit $visit"
sync office

say "Head office assigns the visit team on the server"
for u in lead second expert; do
  "$adm" --db "$work/server.db" assign "$visit" "$u"
done
note "inspectors see their visits and those visits' services; the Expert"
note "by Experience sees the visit's basic details and their own notes only"

say "The night before, every tablet syncs the visit pack"
for u in lead second expert; do sync "$u"; done
for u in lead second expert; do
  note "$u's tablet holds $(records "$u") records"
done

say "On site, no signal all day: everything is recorded offline"
for s in OP7:3 OP8:3 OP9:2 OP10:3 OP12:2 OP15:3; do
  "$cli" --db "$work/lead.db" add observation visit_id="$visit" \
    standard_code="${s%%:*}" judgement="${s##*:}" assessor=lead \
    evidence_category=observation \
    evidence_text="Case tracked C1-C3; records and practice checked for ${s%%:*}." \
    >/dev/null
done
for s in OP18:3 OP26:4 OP27:2 OP28:3 OP29:2 OP30:3; do
  "$cli" --db "$work/second.db" add observation visit_id="$visit" \
    standard_code="${s%%:*}" judgement="${s##*:}" assessor=second \
    evidence_text="Staff files, rota and training records for ${s%%:*}." \
    >/dev/null
done
note "lead and second inspector: 12 standards judged on the 1-4 scale"
for r in R1 R2 R3; do
  "$cli" --db "$work/expert.db" add interview_note visit_id="$visit" \
    expert=expert participant_code="$r" participant_role=resident consent=given \
    mode=face said="Staff are kind; would like more trips out." \
    themes='{"theme":"staff_attitude","sentiment":"positive"}' \
    themes='{"theme":"activities","sentiment":"negative"}' >/dev/null
done
"$cli" --db "$work/expert.db" add interview_note visit_id="$visit" \
  expert=expert participant_code=R4 participant_role=resident \
  consent=declined >/dev/null
note "Expert by Experience: 4 conversations (one resident declined)"
"$cli" --db "$work/expert.db" add observation visit_id="$visit" \
  standard_code=OP10 judgement=2 assessor=expert \
  evidence_text="Call bells took a long time to answer." >/dev/null
note "the expert also writes an observation, which only inspectors may do"
req=$("$cli" --db "$work/lead.db" add requirement service_id="$service" \
  raised_visit_id="$visit" standard_code=OP9 regulation="Reg 13(2)" \
  kind=statutory status=open owner=lead timescale_due=2008-12-23 \
  text="Medication administration records must be signed at each round.")
note "lead raises requirement $req (OP9, Reg 13(2), 14 days)"

say "Everyone syncs when back in signal"
for u in lead second expert; do sync "$u"; done
for u in lead second; do sync "$u"; done
note "the server refused the expert's observation; it stays on the tablet,"
note "marked refused, for the expert and the lead inspector to sort out:"
"$cli" --db "$work/expert.db" refused | sed 's/^/   /'

say "Both inspectors, offline again, edit the same requirement"
"$cli" --db "$work/lead.db" edit "$req" timescale_due=2009-01-06
note "lead: extends the timescale to 28 days"
"$cli" --db "$work/second.db" edit "$req" \
  text="Medication administration records must be signed and dated at each round."
note "second: rewrites the requirement's text"

say "They sync: the concurrent edits are detected, both are kept"
for u in lead second lead office; do sync "$u"; done
"$cli" --db "$work/office.db" conflicts
"$cli" --db "$work/office.db" show "$req"

say "Head office resolves it, keeping both changes"
"$cli" --db "$work/office.db" resolve "$req" timescale_due=2009-01-06 \
  text="Medication administration records must be signed and dated at each round."
"$cli" --db "$work/office.db" show "$req" | sed -n '1,4p'

say "Everyone syncs again"
for u in office lead second expert; do sync "$u"; done

say "Head office and both inspectors now hold the same data"
for u in lead second office; do
  n=$(records "$u")
  c=$(count "$("$cli" --db "$work/$u.db" conflicts --json)")
  # "pending" is this replica's own bookkeeping; everything else must match.
  h=$("$cli" --db "$work/$u.db" export --format json |
    sed 's/"pending":[a-z]*,//g' | sha256sum | cut -c1-16)
  printf '   %-7s %3s records, %s conflicts, content %s\n' "$u" "$n" "$c" "$h"
  echo "$h" >>"$work/hashes"
done
if [ "$(sort -u "$work/hashes" | wc -l)" -ne 1 ]; then
  echo "demo: the replicas differ" >&2
  exit 1
fi
note "identical: every replica converged, nothing was lost"
for c in visit interview_note observation service requirement; do
  n=$(count "$("$cli" --db "$work/expert.db" list "$c" --json)")
  note "expert's tablet: $n $c"
done
note "(the observation is the expert's own refused one, never sent)"

say "The requirement as everyone now sees it"
"$cli" --db "$work/second.db" show "$req"

say "The visit is over: head office ends the expert's assignment"
"$adm" --db "$work/server.db" unassign "$visit" expert
sync expert
note "the expert's tablet now holds $(records expert) records; what had not"
note "reached the server was moved to the quarantine first:"
"$cli" --db "$work/expert.db" quarantine | sed 's/^/   /'

say "Stopping the server"
kill -TERM "$server_pid"
wait "$server_pid" || true
server_pid=""
grep 'event=stopped' "$work/server.log" | sed 's/^/   /'
echo
echo "Demo complete."
