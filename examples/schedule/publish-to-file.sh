#!/bin/sh
# publish-to-file.sh: the --publish command of rolekit.crontab.
#
# rolekit gives the new credentials on stdin (the JSON document of
# `rolekit creds --format json`); this writes them to $CREDENTIALS_FILE so
# that readers see the old file or the new one, whole: a temporary file in
# the same folder, then a rename, readable by $CREDENTIALS_GROUP (the
# applications' group) when it is set. Applications read it with
# CredentialsProvider.from_file, which re-reads it when it changes.
set -eu
target=${CREDENTIALS_FILE:?set CREDENTIALS_FILE to the file the applications read}
tmp=$(mktemp "$target.XXXXXX") # mode 0600, in the target's folder
trap 'rm -f "$tmp"' EXIT
cat >"$tmp"
if [ -n "${CREDENTIALS_GROUP:-}" ]; then
  chgrp "$CREDENTIALS_GROUP" "$tmp"
fi
chmod 0640 "$tmp" # the applications' group may read it
mv "$tmp" "$target"
trap - EXIT
