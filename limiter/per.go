package limiter

import (
	"fmt"
	"strings"
)

// Per tells who shares a rule's buckets: each user has one (PerUser, the
// default), each team one shared by its users (PerTeam), or every call
// the rule's scope matches shares one (PerAll). A check must pass every
// applicable level: the user's own bucket, the team's pool and the shared pool.
type Per uint8

// The levels of sharing, narrowest first: the order in which a check
// takes its buckets, so that a refusal by a user's own bucket never
// touches a pool that other users wait on.
const (
	PerUser Per = iota
	PerTeam
	PerAll
	numPers
)

var perNames = [numPers]string{"user", "team", "all"}

// String returns the level as the limits file and the API spell it.
func (p Per) String() string {
	if p >= numPers {
		return fmt.Sprintf("Per(%d)", uint8(p))
	}
	return perNames[p]
}

// ParsePer parses a level name; empty is PerUser.
func ParsePer(s string) (Per, error) {
	if s == "" {
		return PerUser, nil
	}
	for p, name := range perNames {
		if s == name {
			return Per(p), nil
		}
	}
	return 0, fmt.Errorf("unknown per %q; valid: user, team, all", s)
}

// A bucket belongs to an owner: a user's own bucket to the user_id, a
// team's pool to TeamOwner(team) and a shared pool to AllOwner. User and
// team IDs never hold NUL (the collector refuses it), so that the pools'
// owners, which start with one, can be no user's.
const (
	// AllOwner owns the buckets of PerAll rules.
	AllOwner = "\x00all"
	// teamOwnerPrefix starts the owner of a team's pools.
	teamOwnerPrefix = "\x00team\x00"
)

// TeamOwner returns the owner of team's pools.
func TeamOwner(team string) string { return teamOwnerPrefix + team }

// ParseOwner tells whose a bucket's owner is: a user (id the user_id), a
// team (id the team_id) or every call (id empty).
func ParseOwner(owner string) (per Per, id string) {
	switch {
	case owner == AllOwner:
		return PerAll, ""
	case strings.HasPrefix(owner, teamOwnerPrefix):
		return PerTeam, owner[len(teamOwnerPrefix):]
	}
	return PerUser, owner
}

// PoolKey names a pool in the API and in logs: "all", "team:<id>", or
// for a user's own bucket "user:<id>".
func PoolKey(owner string) string {
	per, id := ParseOwner(owner)
	if per == PerAll {
		return "all"
	}
	return per.String() + ":" + id
}
