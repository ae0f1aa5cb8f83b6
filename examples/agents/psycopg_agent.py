#!/usr/bin/env python3
"""An AI agent's executor running its plan against PostgreSQL through Airlock.

The agent uses Python's psycopg 3 exactly as it would against PostgreSQL
itself. What changes is what it holds: an Airlock access token instead of a
database password. Airlock checks every statement, masks what comes back,
and records everything before it reaches the database. The executor only has
to understand PostgreSQL's own answers:

- a refused statement is an error with SQLSTATE 42501 whose message names
  the rule and says what to do instead; the connection stays usable,
- a statement held for a human's approval first sends a notice with the
  approval's id and URL, then either runs or fails with the reviewer's reason,
- masked values arrive as placeholders such as <EMAIL>.

Against `airlock demo` (it prints the token):

    export AGENT_TOKEN=...
    python3 examples/agents/psycopg_agent.py

and approve the refund from another terminal with the DBA token the demo
prints (`airlock approvals list`, `airlock approvals approve <ID>`).
Needs psycopg 3.2 or later: `pip install 'psycopg[binary]'`.
"""

import argparse
import os
import sys
import threading

import psycopg
from psycopg import errors

# What a planner might hand its executor: a goal per step, and the SQL.
PLAN = [
    ("look at the first customers",
     "SELECT id, name, email, card_number FROM customers ORDER BY id LIMIT %s", (3,)),
    ("count the open orders",
     "SELECT count(*) FROM orders WHERE status = %s", ("new",)),
    ("clear out the orders table", "DELETE FROM orders", None),
    ("drop a table that looks unused", "DROP TABLE customers", None),
    ("refund order 7",
     "UPDATE orders SET status = 'refunded' WHERE id = %s", (7,)),
    ("check the refund", "SELECT id, status FROM orders WHERE id = %s", (7,)),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "AIRLOCK_PG",
            "host=127.0.0.1 port=15432 dbname=demo user=agent-1 sslmode=disable"),
        help="libpq connection string of the Airlock listener (env AIRLOCK_PG)")
    parser.add_argument(
        "--approval-timeout", type=float, default=300.0,
        help="seconds to wait for a human before cancelling the statement")
    args = parser.parse_args()
    token = os.environ.get("AGENT_TOKEN")
    if not token:
        print("set AGENT_TOKEN to the agent's Airlock token "
              "(`airlock demo` prints one)", file=sys.stderr)
        return 2

    # Each step commits on its own: a refused step must not undo the others.
    with psycopg.connect(args.dsn, password=token, autocommit=True) as conn:
        waiting = Waiting(conn, args.approval_timeout)
        conn.add_notice_handler(waiting.on_notice)
        for goal, sql, params in PLAN:
            print(f"step: {goal}")
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, params)
                    report(cur)
            except errors.InsufficientPrivilege as e:
                # Refused by policy (or by the reviewer): the reason is
                # meant for the planner, which can choose another way.
                print(f"  refused: {e.diag.message_primary}")
            except errors.QueryCanceled:
                print("  nobody approved in time; the statement did not run")
            finally:
                waiting.stop()
    return 0


def report(cur: psycopg.Cursor) -> None:
    if cur.description is None:
        print(f"  {cur.statusmessage}")
        return
    for row in cur.fetchall():
        print(f"  {row}")


class Waiting:
    """Prints Airlock's notices and cancels a statement that waits too long."""

    def __init__(self, conn: psycopg.Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.timer = None

    def on_notice(self, diag: psycopg.errors.Diagnostic) -> None:
        print(f"  airlock: {diag.message_primary}", flush=True)
        if "waiting for approval" in (diag.message_primary or ""):
            # The notice arrives while execute() is still blocked: cancel
            # from a timer thread, as psycopg allows.
            self.timer = threading.Timer(self.timeout, self.conn.cancel_safe)
            self.timer.start()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


if __name__ == "__main__":
    sys.exit(main())
