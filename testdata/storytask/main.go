// Command storytask builds the story-continuation task of `dllm eval
// --task` from the TinyStories documents that a convert run with
// --eval-fraction holds out (the last fraction, in corpus order, split as
// corpus splits them): each item is a story's first 2 (or 4) sentences and four
// continuations, the true next two sentences (label 0 before shuffling the
// choice order), the same two in swapped order, the true ones with their
// words shuffled, and two sentences from another held-out story.
//
//	go run ./testdata/storytask -data ../shared/data/tinystories/TinyStories-train-head.txt \
//	    -separator single-newline -eval-fraction 0.05 > testdata/storytask/tinystories-heldout.jsonl
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"

	"github.com/dllm-dev/dllm/corpus"
)

var sentenceEnd = regexp.MustCompile(`[.!?]["”]?\s+`)

func sentences(doc string) []string {
	doc = strings.Join(strings.Fields(doc), " ")
	var out []string
	start := 0
	for _, m := range sentenceEnd.FindAllStringIndex(doc, -1) {
		out = append(out, strings.TrimSpace(doc[start:m[1]]))
		start = m[1]
	}
	if rest := strings.TrimSpace(doc[start:]); rest != "" {
		out = append(out, rest)
	}
	return out
}

type item struct {
	Context string   `json:"context"`
	Choices []string `json:"choices"`
	Label   int      `json:"label"`
	Kinds   []string `json:"kinds"` // what each choice is (ignored by the loader)
	Story   int      `json:"story"` // index of the document in the corpus
}

func main() {
	data := flag.String("data", "", "the training text a convert run used")
	sep := flag.String("separator", "single-newline", "document separator, as given to convert")
	frac := flag.Float64("eval-fraction", 0.05, "the convert run's --eval-fraction")
	perStory := flag.Int("per-story", 2, "items per held-out story")
	seed := flag.Uint64("seed", 16, "shuffle seed")
	flag.Parse()
	if *data == "" {
		fmt.Fprintln(os.Stderr, "storytask: give -data FILE")
		os.Exit(2)
	}
	docs, err := corpus.ReadDocuments([]string{*data}, *sep, "text")
	if err != nil {
		fmt.Fprintln(os.Stderr, "storytask:", err)
		os.Exit(1)
	}
	// corpus.Load's split: the last round(frac*n) documents, at least 1.
	n := len(docs)
	k := min(max(int(math.Round(*frac*float64(n))), 1), n-1)
	first := n - k
	rng := rand.New(rand.NewPCG(*seed, 0))
	type story struct {
		idx  int
		sent []string
	}
	var held []story
	for i := first; i < n; i++ {
		if s := sentences(docs[i]); len(s) >= 5 {
			held = append(held, story{i, s})
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	count := 0
	for si, st := range held {
		s := st.sent
		// Cut after 2, 4, ... sentences: short contexts keep the rows
		// short (the diffusion estimate runs every choice --mc times).
		for c := 0; c < *perStory; c++ {
			cut := 2 + 2*c
			if cut+2 > len(s) {
				continue
			}
			a, b := s[cut], s[cut+1]
			words := strings.Fields(a + " " + b)
			shuf := append([]string(nil), words...)
			for tries := 0; tries < 10 && strings.Join(shuf, " ") == strings.Join(words, " "); tries++ {
				rng.Shuffle(len(shuf), func(i, j int) { shuf[i], shuf[j] = shuf[j], shuf[i] })
			}
			other := held[(si+1+rng.IntN(len(held)-1))%len(held)].sent
			oc := min(cut, len(other)-2)
			choices := []string{a + " " + b, b + " " + a, strings.Join(shuf, " "), other[oc] + " " + other[oc+1]}
			kinds := []string{"true", "swapped", "word-shuffled", "foreign"}
			if a == b || choices[3] == choices[0] {
				continue
			}
			perm := rng.Perm(4)
			it := item{Context: strings.Join(s[:cut], " "), Story: st.idx}
			for _, p := range perm {
				it.Choices = append(it.Choices, choices[p])
				it.Kinds = append(it.Kinds, kinds[p])
				if p == 0 {
					it.Label = len(it.Choices) - 1
				}
			}
			if err := enc.Encode(it); err != nil {
				fmt.Fprintln(os.Stderr, "storytask:", err)
				os.Exit(1)
			}
			count++
		}
	}
	fmt.Fprintf(os.Stderr, "storytask: %d documents, %d held out (from %d), %d stories with >= 5 sentences, %d items\n",
		n, k, first, len(held), count)
}
