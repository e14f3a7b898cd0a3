package serve

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/dllm-dev/dllm/diffusion"
	"github.com/dllm-dev/dllm/model"
)

// job is one request's rows waiting for, or in, a batch.
type job struct {
	ctx   context.Context
	enq   time.Time
	key   batchKey
	opt   diffusion.GenOptions
	group diffusion.Group

	mu sync.Mutex
	// blocks carries the rows' generated tokens at each finished block, in
	// order; its capacity (GenLen+2) holds every block, so the sampler never
	// waits for a slow client and no block is skipped.
	blocks chan [][]int32

	// partial: the rows after every step, masks included (dllm_partial).
	partial     bool
	steps       [][]int32
	stepsNotify chan struct{}
	done        chan result // the outcome (capacity 1)
}

type result struct {
	tokens    [][]int32
	steps     int
	forward   int
	batchRows int
	queued    time.Duration
	err       error
}

// batchKey is what requests must share to run in one forward: every
// sampler setting but the seed and the number of rows, and the prompt
// length (rows of a batch are not padded, so each computes exactly what it
// would alone).
type batchKey struct {
	promptLen, genLen, steps, blockLen, topK int
	temperature, topP, algTemp, threshold    float64
	alg                                      diffusion.Alg
	stopAtEOS                                bool
	eos                                      string
}

func keyOf(o diffusion.GenOptions, promptLen int) batchKey {
	return batchKey{promptLen: promptLen, genLen: o.GenLen, steps: o.Steps, blockLen: o.BlockLen, topK: o.TopK,
		temperature: o.Temperature, topP: o.TopP, algTemp: o.AlgTemp, threshold: o.Threshold, alg: o.Alg,
		stopAtEOS: o.StopAtEOS, eos: fmt.Sprint(o.EOS)}
}

var errQueueFull = errors.New("queue full")

// queue holds the jobs for the one model: a single worker takes the oldest
// waiting job and every compatible one behind it, up to maxBatch rows.
type queue struct {
	m        *model.Model
	info     diffusion.Info
	maxBatch int
	maxJobs  int // waiting or running; 0: no limit

	mu       sync.Mutex
	waiting  []*job
	admitted int
	running  int
	wake     chan struct{}

	// Tests' hooks: before a batch is decoded, and with its outcome.
	beforeBatch func([]*job)
	afterBatch  func(*diffusion.GenResult, error)
}

func newQueue(m *model.Model, info diffusion.Info, maxBatch, maxJobs int) *queue {
	return &queue{m: m, info: info, maxBatch: max(maxBatch, 1), maxJobs: maxJobs, wake: make(chan struct{}, 1)}
}

// submit admits a job, or fails when the queue is full. The caller calls
// release once it no longer waits for the job.
func (q *queue) submit(j *job) error {
	q.mu.Lock()
	if q.maxJobs > 0 && q.admitted >= q.maxJobs {
		q.mu.Unlock()
		return errQueueFull
	}
	q.admitted++
	q.waiting = append(q.waiting, j)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return nil
}

// release frees the job's slot and drops it from the queue if it still
// waits.
func (q *queue) release(j *job) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.admitted--
	if i := slices.Index(q.waiting, j); i >= 0 {
		q.waiting = slices.Delete(q.waiting, i, i+1)
	}
}

func (q *queue) stats() (waiting, running int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiting), q.running
}

// next takes the oldest live job and the compatible jobs behind it.
func (q *queue) next() []*job {
	q.mu.Lock()
	defer q.mu.Unlock()
	live := q.waiting[:0]
	for _, j := range q.waiting {
		if j.ctx.Err() == nil {
			live = append(live, j)
		}
	}
	clear(q.waiting[len(live):])
	q.waiting = live
	if len(live) == 0 {
		return nil
	}
	batch := []*job{live[0]}
	rows := live[0].group.Rows
	rest := []*job{}
	for _, j := range live[1:] {
		if j.key == batch[0].key && rows+j.group.Rows <= q.maxBatch {
			batch = append(batch, j)
			rows += j.group.Rows
		} else {
			rest = append(rest, j)
		}
	}
	q.waiting = append(q.waiting[:0], rest...)
	q.running = len(batch)
	return batch
}

// run is the worker: it decodes batches until ctx ends.
func (q *queue) run(ctx context.Context) {
	for {
		batch := q.next()
		if batch == nil {
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			}
			continue
		}
		q.decode(batch)
		q.mu.Lock()
		q.running = 0
		q.mu.Unlock()
	}
}

// decode runs one batch and hands each job its rows.
func (q *queue) decode(batch []*job) {
	if q.beforeBatch != nil {
		q.beforeBatch(batch)
	}
	start := time.Now()
	opt := batch[0].opt
	groups := make([]diffusion.Group, len(batch))
	first := make([]int, len(batch)+1) // first row of each job
	for i, j := range batch {
		groups[i] = j.group
		first[i+1] = first[i] + j.group.Rows
	}
	opt.Batch = first[len(batch)]
	P := len(groups[0].Prompt)
	opt.OnBlock = func(hi int, x [][]int32) {
		for i, j := range batch {
			rows := make([][]int32, j.group.Rows)
			for r := range rows {
				rows[r] = slices.Clone(x[first[i]+r][P:hi])
			}
			select {
			case j.blocks <- rows:
			default: // cannot happen: there are at most GenLen blocks
			}
		}
	}
	for _, j := range batch {
		if j.partial {
			opt.Observe = func(_ int, x [][]int32) {
				for i, j := range batch {
					if !j.partial {
						continue
					}
					rows := make([][]int32, j.group.Rows)
					for r := range rows {
						rows[r] = slices.Clone(x[first[i]+r][P:])
					}
					j.mu.Lock()
					j.steps = rows
					j.mu.Unlock()
					select {
					case j.stepsNotify <- struct{}{}:
					default:
					}
				}
			}
			break
		}
	}
	res, err := q.generate(opt, groups)
	if q.afterBatch != nil {
		q.afterBatch(res, err)
	}
	for i, j := range batch {
		out := result{batchRows: opt.Batch, queued: start.Sub(j.enq), err: err}
		if err == nil {
			out.tokens = res.Tokens[first[i]:first[i+1]]
			out.steps, out.forward = res.Steps, res.Forward
		}
		j.done <- out
	}
}

func (q *queue) generate(opt diffusion.GenOptions, groups []diffusion.Group) (res *diffusion.GenResult, err error) {
	defer func() {
		// A backend failure must not take the server down with it.
		if p := recover(); p != nil {
			err = fmt.Errorf("generation failed: %v", p)
		}
	}()
	s, err := diffusion.NewSampler(q.m, q.info, opt)
	if err != nil {
		return nil, err
	}
	defer s.Free()
	return s.GenerateGroups(groups)
}
