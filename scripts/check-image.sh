#!/usr/bin/env bash
# Checks the container image recipe without a Docker engine (none on CI machines here):
#
#  1. Dockerfile: multi-stage, CGO_ENABLED=0, -trimpath, -s -w, final stage distroless
#     nonroot or scratch, a numeric non-root USER, ENTRYPOINT ["/worker"], and the four
#     binaries (worker, enqueue, omics-sim, console) copied to the paths the chart and docs use.
#  2. .dockerignore keeps every Go package the binaries need in the build context.
#  3. The build the Dockerfile runs, done here: ./cmd/worker must link statically (no ELF
#     interpreter, no dynamic section) and answer --help; ./cmd/enqueue, ./cmd/omics-sim and ./cmd/console
#     are built too, but their failure only warns (they are developed separately).
#
# Usage: scripts/check-image.sh [--no-build]   (needs go; uses file and readelf when present)
#   --no-build      only the file checks (1 and 2)
#   DOCKERFILE=...  check another Dockerfile (deploy/helmcheck tests the checks with bad ones)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dockerfile="${DOCKERFILE:-$root/Dockerfile}"
build=1
case "${1:-}" in
--no-build) build=0 ;;
"") ;;
*) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac
failures=0
fail() { echo "check-image: FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "check-image: ok: $*"; }
warn() { echo "check-image: WARN: $*" >&2; }

# --- 1. Dockerfile ------------------------------------------------------------------------
[ -f "$dockerfile" ] || { echo "check-image: $dockerfile missing" >&2; exit 1; }
# Instructions only: comments dropped, line continuations joined.
instructions="$(sed -e 's/^[[:space:]]*#.*$//' "$dockerfile" | sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta' | grep -v '^[[:space:]]*$')"
last_stage="$(printf '%s\n' "$instructions" | awk 'toupper($1)=="FROM"{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}')"

stages=$(printf '%s\n' "$instructions" | grep -ci '^FROM ' || true)
if [ "$stages" -ge 2 ]; then ok "multi-stage build ($stages stages)"; else fail "expected a multi-stage build, found $stages FROM"; fi

final_from="$(printf '%s\n' "$last_stage" | head -n1 | awk '{print $2}')"
case "$final_from" in
gcr.io/distroless/static*:nonroot | gcr.io/distroless/static*:nonroot@* | scratch) ok "final base $final_from" ;;
*) fail "final stage must be gcr.io/distroless/static*:nonroot or scratch, got '$final_from'" ;;
esac

build_line="$(printf '%s\n' "$instructions" | grep -E '^RUN .*go build' || true)"
if [ -z "$build_line" ]; then
	fail "no RUN ... go build"
else
	for want in 'CGO_ENABLED=0' '-trimpath' '-s -w' './cmd/worker' './cmd/enqueue' './cmd/omics-sim' './cmd/console'; do
		case "$build_line" in
		*"$want"*) ok "go build has $want" ;;
		*) fail "go build lacks $want" ;;
		esac
	done
fi

user="$(printf '%s\n' "$last_stage" | grep -iE '^USER ' | tail -n1 | awk '{print $2}')"
if [[ "$user" =~ ^([0-9]+)(:([0-9]+))?$ ]] && [ "${BASH_REMATCH[1]}" -ne 0 ] && [ "${BASH_REMATCH[3]:-1}" -ne 0 ]; then
	ok "USER $user is numeric and non-root"
else
	fail "final stage needs a numeric non-root USER (runAsNonRoot cannot check a name), got '${user:-none}'"
fi
chart_uid="$(grep -E '^[[:space:]]+runAsUser:' deploy/helm/omicsq/values.yaml | head -n1 | awk '{print $2}')"
if [ -n "$chart_uid" ] && [ "${user%%:*}" != "$chart_uid" ]; then
	fail "USER $user differs from the chart's runAsUser $chart_uid"
fi

entrypoint="$(printf '%s\n' "$last_stage" | grep -iE '^ENTRYPOINT ' | tail -n1 | sed -E 's/^[Ee][Nn][Tt][Rr][Yy][Pp][Oo][Ii][Nn][Tt][[:space:]]+//; s/[[:space:]]+$//')"
if [ "$entrypoint" = '["/worker"]' ]; then
	ok "ENTRYPOINT [\"/worker\"]"
else
	fail "ENTRYPOINT must be [\"/worker\"] (exec form), got '$entrypoint'"
fi

for bin in worker enqueue omics-sim console; do
	if printf '%s\n' "$last_stage" | grep -qE "^COPY --from=[^ ]+ [^ ]*/$bin /$bin\$"; then
		ok "/$bin copied into the final image"
	else
		fail "final stage does not COPY --from=<build> .../$bin /$bin"
	fi
done

# --- 2. .dockerignore keeps the sources ---------------------------------------------------
if [ -f .dockerignore ]; then
	mapfile -t ignores < <(sed -e 's/#.*$//' -e 's/[[:space:]]*$//' .dockerignore | grep -v '^$' | grep -v '^!' || true)
	module="$(go list -m)"
	pkgdirs="$(go list -deps -f '{{if .Module}}{{if eq .Module.Path "'"$module"'"}}{{.Dir}}{{end}}{{end}}' ./cmd/worker ./cmd/enqueue ./cmd/omics-sim ./cmd/console 2>/dev/null | sort -u || true)"
	excluded=0
	while IFS= read -r dir; do
		[ -n "$dir" ] || continue
		rel="${dir#"$root"/}"
		for pat in "${ignores[@]}"; do
			pat="${pat#/}"
			pat="${pat#\*\*/}"
			# shellcheck disable=SC2053 # glob match on purpose
			if [[ "$rel" == $pat || "$rel" == $pat/* ]]; then
				fail ".dockerignore pattern '$pat' drops package directory $rel"
				excluded=1
			fi
		done
	done <<<"$pkgdirs"
	[ "$excluded" -ne 0 ] || ok ".dockerignore keeps all $(printf '%s\n' "$pkgdirs" | grep -c .) package directories of the binaries"
	for must in go.mod go.sum; do
		for pat in "${ignores[@]}"; do
			[ "$pat" = "$must" ] && fail ".dockerignore drops $must"
		done
	done
else
	warn "no .dockerignore: the whole tree (including .git) is sent as build context"
fi

# --- 3. The static build ------------------------------------------------------------------
if [ "$build" -eq 0 ]; then
	if [ "$failures" -gt 0 ]; then
		echo "check-image: $failures check(s) failed" >&2
		exit 1
	fi
	echo "check-image: file checks passed (build skipped)"
	exit 0
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
export CGO_ENABLED=0
if go build -buildvcs=false -trimpath -ldflags "-s -w -X main.version=check-image" -o "$out/worker" ./cmd/worker; then
	ok "CGO_ENABLED=0 go build ./cmd/worker"
	if go version -m "$out/worker" | grep -qE '^[[:space:]]+build[[:space:]]+CGO_ENABLED=0$'; then
		ok "go version -m: CGO_ENABLED=0"
	else
		fail "go version -m does not report CGO_ENABLED=0"
	fi
	if command -v file >/dev/null 2>&1; then
		desc="$(file -b "$out/worker")"
		case "$desc" in
		*"statically linked"*) ok "file: statically linked" ;;
		*) fail "file says: $desc" ;;
		esac
	fi
	if command -v readelf >/dev/null 2>&1; then
		if readelf -l "$out/worker" | grep -q 'INTERP' || readelf -d "$out/worker" 2>/dev/null | grep -q 'NEEDED'; then
			fail "readelf: the binary has an interpreter or needs shared libraries"
		else
			ok "readelf: no INTERP, no NEEDED"
		fi
	fi
	help="$("$out/worker" --help 2>&1 || true)"
	if grep -q -- '-metrics-addr' <<<"$help"; then
		ok "/worker --help lists its flags"
	else
		fail "/worker --help did not print the flag list"
	fi
else
	fail "CGO_ENABLED=0 go build ./cmd/worker"
fi
for cmd in enqueue omics-sim console; do
	if [ ! -d "cmd/$cmd" ]; then
		warn "cmd/$cmd does not exist yet; the Dockerfile build would fail"
	elif go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$out/$cmd" "./cmd/$cmd" 2>"$out/$cmd.log"; then
		ok "CGO_ENABLED=0 go build ./cmd/$cmd"
	else
		warn "go build ./cmd/$cmd failed (not fatal here; the image build needs it):"
		sed 's/^/    /' "$out/$cmd.log" >&2
	fi
done

if [ "$failures" -gt 0 ]; then
	echo "check-image: $failures check(s) failed" >&2
	exit 1
fi
echo "check-image: all checks passed"
