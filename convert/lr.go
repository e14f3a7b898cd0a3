package convert

import "math"

// LearningRate is the schedule's rate at an optimizer step: linear warm-up,
// then constant, cosine to MinLR, or WSD (stable, then a linear decay to
// MinLR over the last DecayFrac of the steps).
func (o *Options) LearningRate(step int) float64 {
	if step < o.Warmup {
		return o.LR * float64(step+1) / float64(o.Warmup)
	}
	switch o.LRSchedule {
	case "cosine":
		span := max(o.Steps-o.Warmup, 1)
		p := math.Min(float64(step-o.Warmup)/float64(span), 1)
		return o.MinLR + (o.LR-o.MinLR)*0.5*(1+math.Cos(math.Pi*p))
	case "wsd":
		decay := int(math.Round(o.DecayFrac * float64(o.Steps)))
		start := o.Steps - decay
		if step < start || decay <= 0 {
			return o.LR
		}
		p := math.Min(float64(step-start+1)/float64(decay), 1)
		return o.LR + (o.MinLR-o.LR)*p
	}
	return o.LR
}
