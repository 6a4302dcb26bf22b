package pgtest

import (
	"net/url"
	"os"
	"testing"
)

// PgBouncerURL returns databaseURL (from URL) through the PgBouncer at
// PGBOUNCER_URL, which make test starts in transaction mode
// (scripts/start-pgbouncer.sh) in front of DATABASE_URL's server: the same
// database, reached through the pooler. Without PGBOUNCER_URL the test is
// skipped, or fails under LLMUSAGE_TEST_REQUIRE_POSTGRES=1.
func PgBouncerURL(t testing.TB, databaseURL string) string {
	t.Helper()
	bouncer := os.Getenv("PGBOUNCER_URL")
	if bouncer == "" {
		if os.Getenv("LLMUSAGE_TEST_REQUIRE_POSTGRES") == "1" {
			t.Fatal("PgBouncer is required (LLMUSAGE_TEST_REQUIRE_POSTGRES=1) but PGBOUNCER_URL is not set (make test starts one: scripts/start-pgbouncer.sh)")
		}
		t.Skip("no PgBouncer: set PGBOUNCER_URL (scripts/start-pgbouncer.sh prints one), or LLMUSAGE_TEST_REQUIRE_POSTGRES=1 to fail instead")
	}
	b, err := url.Parse(bouncer)
	if err != nil {
		t.Fatalf("cannot parse PGBOUNCER_URL: %s", err)
	}
	d, err := url.Parse(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	b.Path = d.Path
	return b.String()
}
