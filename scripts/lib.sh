# Shared settings for weir's scripts. Sourced, not run.
set -euo pipefail

WEIR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Services live under target/ so `cargo clean` or a fresh clone starts from nothing.
WEIR_SERVICES="${WEIR_SERVICES:-$WEIR_ROOT/target/services}"
# Tools that take long to build (the broker) are cached outside the clone and reused.
WEIR_CACHE="${WEIR_CACHE:-$HOME/.cache/weir}"
TANSU_VERSION="0.6.0"
TANSU_BIN="$WEIR_CACHE/tools/tansu-$TANSU_VERSION/bin/tansu"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
# Azurite emulates Azure Blob Storage (the reference design's ADLS Gen2 `landing-zone`) for tests.
AZURITE_VERSION="3.35.0"
AZURITE_DIR="$WEIR_CACHE/tools/azurite-$AZURITE_VERSION"
# moto emulates S3 for the functional S3 tests (its conditional writes are not race-proof, see README).
MOTO_VERSION="5.2.5"
MOTO_DIR="$WEIR_CACHE/tools/moto-$MOTO_VERSION"
# Another engine's reader of the Delta tables (delta-rs's Python release and pyarrow), for tests.
DELTA_READERS="$WEIR_CACHE/tools/delta-readers-py-deltalake-1.6.6"
export WEIR_DELTA_PYTHON="$DELTA_READERS/bin/python"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
