package users

import (
	"strings"
	"testing"
)

func TestParseRanges(t *testing.T) {
	r, err := ParseRanges("0-999, 65534")
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[uint32]bool{0: true, 999: true, 1000: false, 65533: false, 65534: true, 65535: false} {
		if r.Contains(id) != want {
			t.Errorf("Contains(%d) = %v, want %v", id, !want, want)
		}
	}
	if r.String() != "0-999,65534" {
		t.Errorf("String() = %q", r.String())
	}
	for _, bad := range []string{"a", "5-1", "1-", "-1", "99999999999"} {
		if _, err := ParseRanges(bad); err == nil {
			t.Errorf("ParseRanges(%q) accepted", bad)
		}
	}
	if r, err := ParseRanges(""); err != nil || len(r) != 0 {
		t.Errorf("empty: %v %v", r, err)
	}
}

func TestLookupAndCheck(t *testing.T) {
	id, err := Lookup("nobody")
	if err != nil {
		t.Skipf("skipped: no user nobody here: %v", err)
	}
	if id.UID != 65534 {
		t.Fatalf("nobody = %+v", id)
	}
	num, err := Lookup("65534")
	if err != nil || num.UID != id.UID || num.Name != "nobody" {
		t.Errorf("numeric lookup: %+v %v", num, err)
	}
	withGroup, err := Lookup("nobody:0")
	if err != nil || withGroup.GID != 0 {
		t.Errorf("user:group: %+v %v", withGroup, err)
	}
	if _, err := Lookup("no-such-user-llorch"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("unknown user: %v", err)
	}
	uids, _ := ParseRanges("0-999,65534")
	err = Check(id, uids, nil)
	if err == nil || !strings.Contains(err.Error(), "denied_host_uids") || !strings.Contains(err.Error(), "65534") {
		t.Errorf("denied uid: %v", err)
	}
	gids, _ := ParseRanges("0")
	if err := Check(withGroup, nil, gids); err == nil || !strings.Contains(err.Error(), "denied_host_gids") {
		t.Errorf("denied gid: %v", err)
	}
	if err := Check(id, nil, gids); err != nil {
		t.Errorf("allowed identity refused: %v", err)
	}
}
