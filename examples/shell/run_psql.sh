#!/bin/sh
# run_psql.sh: a non-Python consumer of rolekit's credentials (POSIX sh + psql).
#
# Runs `psql -c 'select session_user'` as the family's preferred member, with
# the credentials of `rolekit creds my_app --context prod --format env` read
# from stdin or from a file, never from arguments (`ps` shows arguments to
# everyone):
#
#   rolekit creds my_app --context prod --format env | ./run_psql.sh
#   rolekit creds my_app --context prod --format env --output creds.env
#   ./run_psql.sh creds.env
#
# The env format sets PGUSER/PGPASSWORD, which psql (libpq) reads, and
# MY_APP_USER, _PASSWORD, _ALT_USER, _ALT_PASSWORD (MY_APP: the family in
# capitals). During a rotation's overlap the ALT pair is the other member: if
# the server rejects the preferred login (the file is ahead of the database),
# psql runs once more as that member (recognised by the server's English
# message: lc_messages = 'C'). Any other failure is not retried.
# APP_DATABASE_URL names host, port and database: no user, no password.
set -eu
umask 077 # the temporary files are private
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ $# -gt 0 ]; then
    case $1 in */*) creds=$1 ;; *) creds=./$1 ;; esac # `. name` would search PATH
else
    creds=$tmp/creds.env
    cat >"$creds"
fi
set -a; . "$creds"; set +a
rm -f "$tmp/creds.env" # read: the secrets live in this shell alone now
alt_user=${MY_APP_ALT_USER:-} alt_password=${MY_APP_ALT_PASSWORD:-}
# psql needs PGUSER and PGPASSWORD only: keep the other copies out of its environment
unset MY_APP_USER MY_APP_PASSWORD MY_APP_ALT_USER MY_APP_ALT_PASSWORD

db=${APP_DATABASE_URL:-postgresql://127.0.0.1:5432/postgres}
query() { psql -X -A -t -v ON_ERROR_STOP=1 -c 'select session_user' "$db" 2>"$tmp/error"; }

status=0
query || status=$?
if [ "$status" -ne 0 ] && [ -n "$alt_user" ] &&
    grep -Eq 'password authentication failed|is not permitted to log in' "$tmp/error"; then
    echo "run_psql.sh: $PGUSER was rejected; trying $alt_user" >&2
    PGUSER=$alt_user PGPASSWORD=$alt_password
    status=0
    query || status=$?
fi
cat "$tmp/error" >&2
exit "$status"
