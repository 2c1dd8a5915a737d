package jobs

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// IDSeparator joins a batch id and a custom_id into a job id. Batch ids
// never contain it (see BatchIDAlphabet), so the job id of a batch line is
// unambiguous: everything before the first IDSeparator is the batch id.
const IDSeparator = ":"

// BatchIDAlphabet lists the characters a batch id may contain: ASCII
// letters, digits, '-', '_' and '.'. Keeping IDSeparator out of it makes
// JobID injective — two different (batch id, custom_id) pairs never name
// the same job — and keeps batch ids safe inside Redis hash tags.
const BatchIDAlphabet = "A-Z a-z 0-9 - _ ."

// JobID returns the id of the job with customID in batch batchID:
// "<batchID>:<customID>". For batch ids that pass CheckBatchID, different
// pairs always give different ids. Every producer of batches (llmq enqueue,
// the Batch API) names jobs with it.
func JobID(batchID, customID string) string { return batchID + IDSeparator + customID }

// CheckBatchID returns a *ValidationError when id is not a valid batch id:
// empty, longer than MaxIDLength, or with a character outside
// BatchIDAlphabet.
func CheckBatchID(id string) error {
	c := &checker{}
	c.batchID("batch_id", id, true)
	if len(c.problems) > 0 {
		return &ValidationError{Problems: c.problems}
	}
	return nil
}

func (c *checker) batchID(path, id string, required bool) {
	switch {
	case id == "":
		if required {
			c.add(path, "is required")
		}
	case len(id) > MaxIDLength:
		c.add(path, "must be at most %d bytes, got %d", MaxIDLength, len(id))
	default:
		if i := strings.IndexFunc(id, func(r rune) bool { return !batchIDRune(r) }); i >= 0 {
			r, _ := utf8.DecodeRuneInString(id[i:])
			c.add(path, "%q: character %q not allowed; a batch id uses only %s", id, r, BatchIDAlphabet)
		}
	}
}

func batchIDRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
}

// jobIDShape reports a job id that holds IDSeparator but is not the id
// JobID gives the job's batch and custom_id: such an id could be another
// batch's job.
func (c *checker) jobIDShape(j *Job) {
	if !strings.Contains(j.ID, IDSeparator) {
		return
	}
	if j.BatchID == "" || j.ID != JobID(j.BatchID, j.CustomID) {
		c.add("id", "%q contains %q, which is reserved for job ids of the form <batch_id>%s<custom_id>%s", j.ID, IDSeparator, IDSeparator, wantID(j))
	}
}

func wantID(j *Job) string {
	if j.BatchID != "" && j.CustomID != "" {
		return fmt.Sprintf(" (here %q); or use an id without %q", JobID(j.BatchID, j.CustomID), IDSeparator)
	}
	return fmt.Sprintf("; use an id without %q", IDSeparator)
}
