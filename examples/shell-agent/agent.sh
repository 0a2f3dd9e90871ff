#!/bin/sh
# Answers every query with "shell says: <turn number>", speaking the bridge protocol on stdio:
# one JSON command per line in, one JSON event per line out, each event echoing the command's id.
n=0
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  n=$((n + 1))
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"shell says: %s"}]}}}\n' "$id" "$n"
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
