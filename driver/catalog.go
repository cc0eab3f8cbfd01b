package driver

import "github.com/llorch/llorch/internal/nomadpb/structs"

// Seam for the jobs helper: the node's model catalog as fingerprint
// attributes. This first version publishes none.
func (d *Driver) catalogAttributes() map[string]*structs.Attribute { return nil }
