"""What `make` runs for users: the server lifecycle (tooling.servers), the
root-owned copy of the server binaries (tooling.bincache), private paths and
secret files on a shared host (tooling.private), and the export layouts for
other migration tools (tooling.export, standard library only). The suite and
the benchmark import it; it imports nothing from tests/ or bench/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = ROOT / "sql"
UP_FILES = (
    SQL_DIR / "045_create_idempotency_records.sql",
    SQL_DIR / "046_create_idempotency_cleanup_job.sql",
)
DOWN_FILES = (
    SQL_DIR / "046_create_idempotency_cleanup_job.down.sql",
    SQL_DIR / "045_create_idempotency_records.down.sql",
)
