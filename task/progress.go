package task

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// progress is a bar with ETA: redrawn in place on a terminal, a line every
// 10% (or 30 s) when stderr is a file or a pipe.
type progress struct {
	w        io.Writer
	total    int
	label    string
	tty      bool
	drawn    bool
	lastLine time.Time
	lastPct  int
}

func newProgress(w io.Writer, total int, label string) *progress {
	p := &progress{w: w, total: total, label: label, lastPct: -1}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

func (p *progress) update(done int, acc float64, tokens int64, elapsed time.Duration) {
	if p.w == nil {
		return
	}
	pct := 100 * done / max(p.total, 1)
	if !p.tty && pct/10 == p.lastPct/10 && done != p.total && time.Since(p.lastLine) < 30*time.Second {
		return
	}
	eta := time.Duration(0)
	if done > 0 {
		eta = elapsed / time.Duration(done) * time.Duration(p.total-done)
	}
	const width = 24
	fill := width * done / max(p.total, 1)
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	rate := ""
	if s := elapsed.Seconds(); s > 0 && tokens > 0 {
		rate = fmt.Sprintf(" %.0f tok/s", float64(tokens)/s)
	}
	label := ""
	if p.label != "" {
		label = p.label + " "
	}
	line := fmt.Sprintf("%s%d/%d [%s] acc %.3f%s elapsed %s ETA %s", label, done, p.total, bar, acc, rate,
		elapsed.Round(time.Second), eta.Round(time.Second))
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.drawn = true
	} else {
		fmt.Fprintln(p.w, line)
	}
	p.lastLine, p.lastPct = time.Now(), pct
}

func (p *progress) done() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
