# Sourced by the native test scripts: build_or_stop BUILD TARGET... builds the targets and stops
# the script on a failed build, printing its errors (otherwise a stale binary from an earlier
# build would run and pass); warnings are printed and do not stop it.
build_or_stop() {
  local build=$1
  shift
  if ! cmake --build "$build" --target "$@" -j"$(nproc)" >"$build/build.log" 2>&1; then
    # its error lines, or the end of the log when none says "error" (make: No rule ...)
    { grep -E "error" "$build/build.log" || tail -5 "$build/build.log"; } | head -20 >&2
    echo "$(basename "$0"): build failed ($build/build.log)" >&2
    exit 1
  fi
  grep -E "warning" "$build/build.log" || true
}
