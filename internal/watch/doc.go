// Package watch turns what the apiserver says about Services, EndpointSlices
// and this node into immutable per-family model.Snapshots.
//
// Flow: three informers (Services, EndpointSlices, this Node) with server-side
// selectors and transform functions that keep only the fields the proxy reads
// → event handlers that convert the object into model values at once and
// record the change → Snapshot(), which folds the recorded changes into new
// snapshots that share every unchanged value with the previous ones.
//
// Why conversion happens in the event handler rather than at Snapshot():
//   - memory: the tracker keeps model values only, never API objects, so the
//     informer caches (already trimmed by the transforms) are the only copy
//     of the API objects in the process;
//   - CPU: each object is converted once per real change, off the sync
//     goroutine, and no-op updates (nothing the proxy reads changed) are
//     detected by comparing converted values, so they never request a sync;
//   - logs: a bad object is reported once per object version, in the event
//     that brought it, never again on resyncs or on later snapshots.
//
// Snapshot() then only merges the EndpointSlices of Services that changed and
// copies the snapshot maps that changed (an unchanged map, or a whole
// unchanged family snapshot, is shared), which keeps a one-change snapshot
// around a millisecond with 10k Services.
//
// Structural sharing: a ServicePort whose inputs did not change keeps its
// *model.ServicePort pointer, and an endpoint list that did not change keeps
// its backing array, from one snapshot to the next. Everything published in a
// Snapshot is immutable: the tracker never writes to a value after it has
// handed it out; it builds new ones instead.
package watch
