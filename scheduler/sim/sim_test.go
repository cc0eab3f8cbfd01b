package sim

import "testing"

func TestPrint(t *testing.T) {
	rs, err := Compare(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		t.Log(r)
	}
}
