package convert

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// progress draws one status line on a terminal (redrawn in place) or, when
// stderr is a file or pipe, prints a line every few percent.
type progress struct {
	w       io.Writer
	total   int
	tty     bool
	quiet   bool
	every   int
	drawn   bool
	lastOut time.Time
}

func newProgress(w io.Writer, total int, quiet bool) *progress {
	p := &progress{w: w, total: total, quiet: quiet, every: max(total/50, 1)}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

// update shows a step; stage is the block size of a block schedule ("" for
// plain annealing, where the attention ratio is shown instead).
func (p *progress) update(step int, loss, acc, ratio float64, stage string, lr, tps float64, elapsed time.Duration, done int) {
	if p.quiet {
		return
	}
	if !p.tty && step%p.every != 0 && step != p.total && time.Since(p.lastOut) < 30*time.Second {
		return
	}
	eta := time.Duration(0)
	if done > 0 {
		eta = elapsed / time.Duration(done) * time.Duration(p.total-step)
	}
	const width = 24
	fill := width * step / max(p.total, 1)
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	attn := fmt.Sprintf("ratio %.2f", ratio)
	if stage != "" {
		attn = "block " + stage
	}
	line := fmt.Sprintf("step %d/%d [%s] loss %.4f acc %.3f %s lr %.2e %s tok/s ETA %s",
		step, p.total, bar, loss, acc, attn, lr, fmtRate(tps), eta.Round(time.Second))
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.drawn = true
	} else {
		fmt.Fprintln(p.w, line)
	}
	p.lastOut = time.Now()
}

// clear erases the live line so that a log line can be printed.
func (p *progress) clear() {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}

func (p *progress) done() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

func fmtRate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}
