// Package users resolves the identity a task's engine runs as (the task's
// user, else the plugin's default_user, else the plugin's own) and checks
// it against the plugin's denied_host_uids / denied_host_gids ranges, the
// way raw_exec reads them ("0-999,65534").
package users

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"sort"
	"strconv"
	"strings"
)

// Identity is a resolved user: what the supervisor hands to
// SysProcAttr.Credential.
type Identity struct {
	Name   string   `json:"name"`
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"` // supplementary
	Home   string   `json:"home,omitempty"`
}

func (id Identity) String() string {
	return fmt.Sprintf("%s (uid %d, gid %d)", id.Name, id.UID, id.GID)
}

// IsCurrent reports whether id is the calling process's own identity, so
// no credential change is needed.
func (id Identity) IsCurrent() bool {
	return id.UID == uint32(os.Geteuid()) && id.GID == uint32(os.Getegid())
}

// Range is an inclusive id range.
type Range struct{ Lo, Hi uint32 }

// Ranges is a parsed denied_host_uids / denied_host_gids value.
type Ranges []Range

// ParseRanges reads "0-999,65534": comma-separated ids or lo-hi ranges.
// An empty string is no ranges.
func ParseRanges(s string) (Ranges, error) {
	var out Ranges
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		l, err := parseID(lo)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", part, err)
		}
		h := l
		if isRange {
			if h, err = parseID(hi); err != nil {
				return nil, fmt.Errorf("%q: %w", part, err)
			}
			if h < l {
				return nil, fmt.Errorf("%q: the range ends before it starts", part)
			}
		}
		out = append(out, Range{l, h})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Lo < out[j].Lo })
	return out, nil
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a numeric id", s)
	}
	return uint32(n), nil
}

// Contains reports whether id is in one of the ranges.
func (r Ranges) Contains(id uint32) bool {
	for _, x := range r {
		if id >= x.Lo && id <= x.Hi {
			return true
		}
	}
	return false
}

func (r Ranges) String() string {
	parts := make([]string, len(r))
	for i, x := range r {
		if x.Lo == x.Hi {
			parts[i] = strconv.FormatUint(uint64(x.Lo), 10)
		} else {
			parts[i] = fmt.Sprintf("%d-%d", x.Lo, x.Hi)
		}
	}
	return strings.Join(parts, ",")
}

// Lookup resolves "user" or "user:group", each a name or a numeric id.
// A user's groups are its primary group and its supplementary groups; an
// explicit group replaces the primary one.
func Lookup(spec string) (Identity, error) {
	name, group, hasGroup := strings.Cut(strings.TrimSpace(spec), ":")
	if name == "" {
		return Identity{}, errors.New("empty user name")
	}
	u, err := lookupUser(name)
	if err != nil {
		return Identity{}, err
	}
	uid, err := parseID(u.Uid)
	if err != nil {
		return Identity{}, fmt.Errorf("user %s: uid: %w", name, err)
	}
	gid, err := parseID(u.Gid)
	if err != nil {
		return Identity{}, fmt.Errorf("user %s: gid: %w", name, err)
	}
	id := Identity{Name: u.Username, UID: uid, GID: gid, Home: u.HomeDir}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := parseID(g); err == nil && n != gid {
				id.Groups = append(id.Groups, n)
			}
		}
	}
	if hasGroup {
		g, err := lookupGroup(group)
		if err != nil {
			return Identity{}, err
		}
		if id.GID, err = parseID(g.Gid); err != nil {
			return Identity{}, fmt.Errorf("group %s: %w", group, err)
		}
	}
	return id, nil
}

func lookupUser(name string) (*user.User, error) {
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		if u, err := user.LookupId(name); err == nil {
			return u, nil
		}
		// A numeric uid with no passwd entry is still a valid identity.
		return &user.User{Uid: name, Gid: name, Username: name}, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("user %q does not exist on this node: %w", name, err)
	}
	return u, nil
}

func lookupGroup(name string) (*user.Group, error) {
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		if g, err := user.LookupGroupId(name); err == nil {
			return g, nil
		}
		return &user.Group{Gid: name, Name: name}, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return nil, fmt.Errorf("group %q does not exist on this node: %w", name, err)
	}
	return g, nil
}

// Current is the calling process's identity.
func Current() (Identity, error) {
	return Lookup(strconv.Itoa(os.Geteuid()))
}

// Check refuses an identity whose uid, primary gid or any supplementary
// gid is in the denied ranges; the error names which.
func Check(id Identity, deniedUIDs, deniedGIDs Ranges) error {
	if deniedUIDs.Contains(id.UID) {
		return fmt.Errorf("user %s: uid %d is in the plugin's denied_host_uids (%s)", id.Name, id.UID, deniedUIDs)
	}
	for _, g := range append([]uint32{id.GID}, id.Groups...) {
		if deniedGIDs.Contains(g) {
			return fmt.Errorf("user %s: gid %d is in the plugin's denied_host_gids (%s)", id.Name, g, deniedGIDs)
		}
	}
	return nil
}
