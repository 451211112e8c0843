# shellcheck shell=bash
# Helpers shared by the scripts in this directory. Source it, don't run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It only defines functions and exported defaults; it has no side effects on
# the machine, so sourcing it is always cheap.

# The repository root, whatever the caller's cwd is.
SBX_REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SBX_REPO_DIR

# Same default as the orchestrator (`--data-dir`, SBX_DATA_DIR), so images
# built here are where `sbx serve` looks for them without extra flags.
export SBX_DATA_DIR="${SBX_DATA_DIR:-/var/lib/sbx}"
export SBX_IMAGES_DIR="${SBX_IMAGES_DIR:-$SBX_DATA_DIR/images}"
# sbx's own Docker Engine (scripts/docker-up starts it): configured for
# sandboxes (user namespaces, disk quotas, no networks), apart from any
# system engine. `sbx serve --runtime docker`, the tests and the benchmark
# all reach it through DOCKER_HOST.
export SBX_DOCKER_HOST="${SBX_DOCKER_HOST:-unix:///run/sbx/docker.sock}"
export DOCKER_HOST="$SBX_DOCKER_HOST"
# One target dir outside the checkout: survives `git clean`, and is shared by
# every script (and every worktree) so nothing is compiled twice.
: "${CARGO_TARGET_DIR:=/var/cache/sbx/target}"
export CARGO_TARGET_DIR

# rustup installs cargo into ~/.cargo/bin, which non-login shells (CI steps,
# sudo) often lack on PATH. Add it only when cargo is not already reachable.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

# sbx_log MSG...: progress for humans, on stderr so that stdout stays
# machine-readable (build-image prints only the rootfs path there).
sbx_log() {
  printf '%s: %s\n' "sbx/${0##*/}" "$*" >&2
}

# sbx_die MSG...: log and exit non-zero.
sbx_die() {
  sbx_log "error: $*"
  exit 1
}

# sbx_apt_install PKG...: install the packages that are not installed yet.
# The dpkg-query check makes the common case (everything present) take a few
# milliseconds and touch nothing; `apt-get update` runs only when something
# is actually missing, and at most once per call.
sbx_apt_install() {
  local pkg status
  local -a missing=()
  for pkg in "$@"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if ((EUID != 0)); then
    sbx_die "missing packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})"
  fi
  sbx_log "installing: ${missing[*]}"
  # Lock::Timeout: on a fresh CI VM, unattended-upgrades or cloud-init may
  # hold the dpkg lock for a while; wait for it instead of failing.
  local -a apt_opts=(-qq -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update >&2
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y \
    --no-install-recommends "${missing[@]}" >&2
}

# Where scripts/build puts the binaries. The agent is built for an explicit
# target triple (static), so it lives in its own subdirectory.
SBX_HOST_TRIPLE="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"
export SBX_HOST_TRIPLE="${SBX_HOST_TRIPLE:-x86_64-unknown-linux-gnu}"
export SBX_BIN="$CARGO_TARGET_DIR/release/sbx"
export SBX_AGENT_BIN="$CARGO_TARGET_DIR/$SBX_HOST_TRIPLE/release/sandbox-agent"

# sbx_cached_venv REQUIREMENTS PREFIX: prints the path of a venv holding
# REQUIREMENTS (a pinned pip freeze), creating it on first use as
# /var/cache/sbx/PREFIX-<hash of the file>, so a changed pin makes a new
# venv and an unchanged one costs a hash. Marked complete only once pip
# finished. Debian's python3 (not whatever python is first on PATH), so a
# fresh machine gets the same one.
sbx_cached_venv() {
  local requirements="$1" prefix="$2"
  local key venv
  key="$(sha256sum "$requirements" | cut -c1-16)"
  venv="/var/cache/sbx/$prefix-$key"
  if [[ ! -x "$venv/bin/python" || ! -e "$venv/.complete" ]]; then
    sbx_apt_install python3 python3-venv
    sbx_log "creating a test venv: $venv"
    rm -rf "$venv"
    mkdir -p /var/cache/sbx
    /usr/bin/python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --no-input -r "$requirements" >&2
    touch "$venv/.complete"
  fi
  printf '%s
' "$venv"
}

# sbx_cached_node_modules DIR PREFIX: prints the path of a node_modules
# holding DIR's package-lock.json, made with `npm ci` on first use under
# /var/cache/sbx/PREFIX-<hash of the lock>, outside the checkout so that no
# node_modules lands in the work tree; marked complete like the venvs.
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the browser tests run /usr/bin/chromium,
# and no install step may fetch a browser build of its own.
sbx_cached_node_modules() {
  local source="$1" prefix="$2"
  local key dir
  key="$(sha256sum "$source/package-lock.json" | cut -c1-16)"
  dir="/var/cache/sbx/$prefix-$key"
  if [[ ! -d "$dir/node_modules" || ! -e "$dir/.complete" ]]; then
    command -v npm >/dev/null 2>&1 || sbx_die "npm not found (scripts/setup installs it)"
    sbx_log "installing node modules: $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$source/package.json" "$source/package-lock.json" "$dir/"
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2)
    touch "$dir/.complete"
  fi
  printf '%s
' "$dir/node_modules"
}

# The Python suites' venv (tests/python: the SDK, MCP, schemathesis, …).
sbx_venv() {
  sbx_cached_venv "$SBX_REPO_DIR/tests/python/requirements.txt" venv
}

# playwright-core, which drives Debian's chromium in the browser tests.
sbx_node_modules() {
  sbx_cached_node_modules "$SBX_REPO_DIR/tests/browser" node
}

# The official E2B SDKs (tests/e2b), apart from the Python suites' venv so
# that the E2B SDK's pins and theirs never have to agree.
sbx_e2b_venv() {
  sbx_cached_venv "$SBX_REPO_DIR/tests/e2b/requirements.txt" e2b-venv
}

sbx_e2b_node_modules() {
  sbx_cached_node_modules "$SBX_REPO_DIR/tests/e2b/js" e2b-node
}
