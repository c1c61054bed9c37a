#!/usr/bin/env bash
# The layer rule of libvgpu (the table and its reasons are at the top of src/process.c): a module calls only
# into its own layer or the layers below it. The one exception is vgpu_init, defined in process.c, which the
# hook layers call before anything else. Checked on the object files: each undefined symbol of a module that
# another module defines must come from a layer at or below the module's own.
#   check_layers.sh [OBJDIR]     check (default: build/obj); exit 0 and "layers: ok" when the rule holds
#   check_layers.sh --table      print the layer table ("module layer" per line)
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
NM=${NM:-nm}

# module layer (a module is a source file in src/ without its extension)
TABLE="
config 0
real 1
region 2
track 2
device 3
nvproc 3
smctl 4
smmath 4
smcapture 4
hooks_mem 5
hooks_ctx 5
hooks_launch 5
hooks_sync 5
hooks_capture 5
intercept 6
dlsym_x86_64 6
process 7
"
HOOK_LAYER=5          # the lowest layer allowed to call UP_ENTRY
UP_ENTRY=process:vgpu_init

if [ "${1:-}" = "--table" ]; then
    echo "$TABLE" | sed '/^$/d'
    exit 0
fi
OBJ=${1:-$HERE/build/obj}

layer_of() { echo "$TABLE" | awk -v m="$1" '$1 == m { print $2 }'; }

status=0
for src in "$HERE"/src/*.c "$HERE"/src/*.S; do
    m=$(basename "${src%.*}")
    if [ -z "$(layer_of "$m")" ]; then
        echo "src/$(basename "$src") has no layer: add it to the table in tests/check_layers.sh and src/process.c"
        status=1
    elif [ ! -f "$OBJ/$m.o" ]; then
        echo "$OBJ/$m.o is missing: build first (make)"
        status=1
    fi
done

table=$(mktemp)
defs=$(mktemp)
uses=$(mktemp)
trap 'rm -f "$table" "$defs" "$uses"' EXIT
echo "$TABLE" >"$table"
for o in "$OBJ"/*.o; do
    m=$(basename "$o" .o)
    if [ -z "$(layer_of "$m")" ]; then
        echo "$m.o has no layer: add it to the table in tests/check_layers.sh and src/process.c"
        status=1
        continue
    fi
    "$NM" -P -g --defined-only "$o" | awk -v m="$m" '{ print $1, m }' >>"$defs"
    "$NM" -P -u "$o" | awk -v m="$m" '{ print m, $1 }' >>"$uses"
done

# One line per offending reference; "refs=N" last.
report=$(awk -v hook="$HOOK_LAYER" -v up="$UP_ENTRY" '
    FILENAME == TABLE { if (NF == 2) layer[$1] = $2; next }
    FILENAME == DEFS { def[$1] = $2; next }
    {
        user = $1; sym = $2
        if (!(sym in def) || def[sym] == user) next
        owner = def[sym]; refs++
        if (layer[owner] <= layer[user]) next
        if (owner ":" sym == up && layer[user] >= hook) next
        printf "%s (layer %d) uses %s, defined in %s (layer %d)\n", user, layer[user], sym, owner, layer[owner]
    }
    END { printf "refs=%d\n", refs }
' TABLE="$table" DEFS="$defs" "$table" "$defs" "$uses")
bad=$(echo "$report" | grep -v '^refs=')
refs=$(echo "$report" | sed -n 's/^refs=//p')
if [ -n "$bad" ]; then
    echo "$bad"
    echo "layers: upward calls found (the table is at the top of src/process.c)"
    status=1
fi
[ $status -eq 0 ] && echo "layers: ok ($refs cross-module references checked)"
exit $status
