//! Integration tests of the agent against a real broker: Debian's mosquitto, started by the
//! tests themselves on a random loopback port (never the system service). The agent runs as
//! its own process (the `lethe-agent` binary), so a test can `kill -9` it.
//!
//! mosquitto is required: a missing broker FAILS the tests with a message (`./x test` installs it);
//! nothing is skipped silently. `LETHE_CRASH_ITERS` sets the crash-loop iterations (default 5);
//! the crash loop prints its random seed, and `LETHE_TEST_SEED=<seed>` replays it.

mod channel;
mod common;
mod crash;
mod e2e;
mod fleet;
mod rejections;
mod revert;
mod tls;
