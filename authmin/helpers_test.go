package authmin

import "time"

// testClock freezes s's clock and returns a handle to move it.
func testClock(s *TokenSet) *time.Time {
	now := time.Now()
	s.now = func() time.Time { return now }
	return &now
}
