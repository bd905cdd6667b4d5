package tracker

import "time"

// Retried returns the runs entry that has the tracker follow newGroup, a
// group RetryRuns created from old's run group, for the same key. Whoever
// created the group writes it over old's revision (internal/rerun); the
// leader's watch of the runs bucket then takes it into the active set like
// any entry that is not terminal.
//
// The entry keeps old's group-subject sequence: the key's group subject
// goes on with the new group's events, and each publish still expects the
// subject's last sequence. Its statuses start empty, since the new group
// has published none; the events carry the new RunGroupId, so their
// Nats-Msg-Ids (client.StatusMsgID) differ from the old group's.
func Retried(old Entry, newGroup string, now time.Time) Entry {
	now = now.UTC()
	return Entry{
		Key: old.Key, RunGroupID: newGroup, ProjectID: old.ProjectID, Batch: old.Batch,
		SubmittedAt: now, RecordedAt: now, UpdatedAt: now,
		Group: Emitted{Seq: old.Group.Seq}, RetryOf: old.RunGroupID, BatchID: old.BatchID,
	}
}
