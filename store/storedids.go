package store

import (
	"context"
	"strings"
)

// storedIDsChunk bounds the request_ids asked at once (SQLite binds at
// most 32,766 parameters).
const storedIDsChunk = 1000

// StoredIDs implements Store, from the unique index on request_id. An
// empty user asks for every user's (a pool's records).
func (s *postgresStore) StoredIDs(ctx context.Context, user string, ids []string) ([]string, error) {
	return storedIDs(ctx, s.query, s.fail, ids, func(chunk []string) (string, []any) {
		return `SELECT request_id FROM llm_usage_logs WHERE request_id = ANY($1) AND ($2 = '' OR user_id::text = $2)`, []any{chunk, user}
	})
}

// StoredIDs implements Store.
func (s *sqliteStore) StoredIDs(ctx context.Context, user string, ids []string) ([]string, error) {
	return storedIDs(ctx, s.query, s.fail, ids, func(chunk []string) (string, []any) {
		args := make([]any, 0, len(chunk)+1)
		for _, id := range chunk {
			args = append(args, id)
		}
		args = append(args, user, user)
		return `SELECT request_id FROM llm_usage_logs WHERE request_id IN (?` + strings.Repeat(",?", len(chunk)-1) + `) AND (? = '' OR user_id = ?)`, args
	})
}

// storedIDs asks query, chunk by chunk, which of ids are stored.
func storedIDs(ctx context.Context, query func(ctx context.Context, sql string, args ...any) (rowScanner, func(), error),
	fail func(what string, err error) error, ids []string, sql func(chunk []string) (string, []any)) ([]string, error) {
	var out []string
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), storedIDsChunk)]
		ids = ids[len(chunk):]
		q, args := sql(chunk)
		rows, done, err := query(ctx, q, args...)
		if err != nil {
			return nil, fail("find stored request_ids", err)
		}
		for rows.Next() {
			var id string
			if err = rows.Scan(&id); err != nil {
				break
			}
			out = append(out, id)
		}
		if err == nil {
			err = rows.Err()
		}
		done()
		if err != nil {
			return nil, fail("find stored request_ids", err)
		}
	}
	return out, nil
}
