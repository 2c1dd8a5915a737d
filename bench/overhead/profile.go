package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// takeProfiles fetches, at once and side by side, a CPU profile and an
// allocation profile (the allocations made during the window) covering
// d from now from the worker's /debug/pprof/ at base, and writes them to
// dir as prefix+"cpu.pprof" and prefix+"allocs.pprof". The channel gets
// one error (nil on success) when both are written.
func takeProfiles(base string, d time.Duration, dir, prefix string) <-chan error {
	done := make(chan error, 1)
	secs := max(1, int(d.Round(time.Second)/time.Second))
	go func() {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			done <- err
			return
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, p := range []struct{ path, file string }{{"profile", "cpu.pprof"}, {"allocs", "allocs.pprof"}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = fetch(fmt.Sprintf("%s%s?seconds=%d", base, p.path, secs), filepath.Join(dir, prefix+p.file), d)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

// fetch GETs url into the file path.
func fetch(url, path string, d time.Duration) error {
	c := http.Client{Timeout: d + 30*time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("profile: GET %s: %s: %s", url, resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile: read %s: %w", url, err)
	}
	return f.Close()
}
