package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/llmq/llmq/hold"
	"github.com/llmq/llmq/policy"
)

// holdGate decides on the account's hold the gate read (nil: none): while
// it stands the job snoozes; a worker whose key differs from the one that
// failed lifts it and goes on.
func (w *Worker) holdGate(ctx context.Context, st *hold.State) *verdict {
	if st == nil {
		return nil
	}
	w.cfg.Metrics.HoldActive(w.cfg.Account, st.Class)
	if w.cfg.Keys != nil {
		if _, err := w.cfg.Keys.Key(); err == nil && w.cfg.Keys.Fingerprint() != st.KeyFingerprint {
			if lifted, err := w.holds.ClearIf(ctx, w.cfg.Account, st.KeyFingerprint); err == nil && lifted {
				w.cfg.Metrics.HoldLifted(w.cfg.Account)
				w.log.Warn().Str("account", w.cfg.Account).Str("class", st.Class).Msg("hold lifted: the API key changed; upstream calls resume")
			}
			return nil
		}
	}
	return snoozeFor(w.cfg.HoldRecheck, fmt.Sprintf("hold: account %q is on hold since %s (%s): %s",
		st.Account, st.Since.UTC().Format(time.RFC3339), st.Class, st.Reason))
}

// placeHold puts the fleet on hold after an auth or quota failure and
// snoozes the job. The hold names the key that failed, so a worker holding
// any other key may lift it; a late 401 for an old key never blocks a new
// one.
func (w *Worker) placeHold(ctx context.Context, a *attempt, pv policy.Verdict) *verdict {
	created, err := w.holds.Set(ctx, hold.State{Account: w.cfg.Account, Class: pv.Class, Reason: pv.Reason, KeyFingerprint: a.callKey, Since: w.now()})
	if err != nil {
		w.log.Error().Err(err).Msg("could not record the hold in Redis")
	}
	if created {
		w.cfg.Metrics.HoldPlaced(w.cfg.Account, pv.Class)
		w.log.Error().Str("event", "hold").Str("account", w.cfg.Account).Str("class", pv.Class).Str("reason", pv.Reason).
			Msg("FLEET ON HOLD: upstream calls stop for this account; jobs are kept. Fix the API key or quota; calls resume when the key changes or after `llmq resume`")
	} else {
		w.cfg.Metrics.HoldActive(w.cfg.Account, pv.Class)
	}
	return snoozeFor(w.cfg.HoldRecheck, "hold: "+pv.Reason)
}

// keyRefreshed reports, after a 401, whether the job should try again at
// once with a new key: the key changed at its source (it is re-read once
// per run), or changed while the call was in flight (another job re-read
// the file), so the 401 speaks of the old key.
func (w *Worker) keyRefreshed(a *attempt) bool {
	if w.cfg.Keys == nil || a.refreshed {
		return false
	}
	a.refreshed = true
	changed, err := w.cfg.Keys.Refresh()
	return err == nil && (changed || w.cfg.Keys.Fingerprint() != a.callKey)
}
