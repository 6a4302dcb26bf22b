package redisquota

import (
	"context"
	"errors"
	"net"
	neturl "net/url"

	"github.com/redis/go-redis/v9"
)

// NewClient connects to the Redis (or, with cluster, the Redis Cluster)
// that url names, as the Store needs it: context deadlines honoured, and
// no retries, since a retried script may already have run (a connection
// lost after the command was written): no call the Store makes is
// idempotent. The error of a url that does not parse never holds it.
func NewClient(url string, cluster bool) (redis.UniversalClient, error) {
	return newClient(url, cluster, nil)
}

// newClient is NewClient with the connections' dialer, for tests that
// stand between the client and Redis; nil for the default.
func newClient(url string, cluster bool, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (redis.UniversalClient, error) {
	if cluster {
		opts, err := redis.ParseClusterURL(url)
		if err != nil {
			return nil, urlError(err)
		}
		opts.ContextTimeoutEnabled, opts.MaxRetries = true, -1
		if dial != nil {
			opts.Dialer = dial
		}
		return redis.NewClusterClient(opts), nil
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, urlError(err)
	}
	opts.ContextTimeoutEnabled, opts.MaxRetries = true, -1
	if dial != nil {
		opts.Dialer = dial
	}
	return redis.NewClient(opts), nil
}

// urlError keeps what is wrong with a URL and drops the URL, which holds
// the password (net/url's errors quote it whole, escaped).
func urlError(err error) error {
	var ue *neturl.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return errors.New("not a redis:// or rediss:// URL")
}
