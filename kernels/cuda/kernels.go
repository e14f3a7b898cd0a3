package cuda

// kernel names one entry point of the PTX modules (see src/*.cu).
type kernel int

const (
	kAdd kernel = iota
	kScale
	kSwiGLU
	kSwiGLUBwd
	kAddBias
	kEmbedding
	kEmbeddingBwd
	kAdamW
	kAdamWBF16
	kCastBF16
	kCastF32
	kRoPE
	kRMSNorm
	kRMSNormBwdDX
	kColsumPartial
	kColsumFinish
	kReducePartial
	kReduceFinish
	kCrossEntropy
	kAttnFwd1
	kAttnFwd2
	kAttnFwd4
	kAttnFwd8
	kAttnDQ1
	kAttnDQ2
	kAttnDQ4
	kAttnDQ8
	kAttnDKV1
	kAttnDKV2
	kAttnDKV4
	kAttnDKV8
	kAttnPrep
	kAttnReduce
	kAttnFwdMMA64
	kAttnFwdMMA128
	kAttnDQMMA64
	kAttnDQMMA128
	kAttnDKVMMA64
	kAttnDKVMMA128
	kRouterTopK
	kRouterBwd
	kMoEDispatch
	kMoECombine
	kMoECombineBwdDY
	kMoECombineBwdDW
	kCEChunkStats
	kCEFinish
	kCEChunkGrad
	numKernels
)

// kernelInfo is each kernel's entry name and its parameter classes (see
// params): every launch is checked against it, and the tests check it
// against the .param lists of the PTX.
var kernelInfo = [numKernels]struct{ name, sig string }{
	kAdd:             {"add_f32", "pppq"},
	kScale:           {"scale_f32", "pfq"},
	kSwiGLU:          {"swiglu_fwd", "pppq"},
	kSwiGLUBwd:       {"swiglu_bwd", "pppppq"},
	kAddBias:         {"add_bias", "ppqi"},
	kEmbedding:       {"embedding_fwd", "pppqi"},
	kEmbeddingBwd:    {"embedding_bwd", "pppqi"},
	kAdamW:           {"adamw", "ppppqfffffff"},
	kAdamWBF16:       {"adamw_bf16", "ppppqfffffffpq"},
	kCastBF16:        {"cast_f32_bf16", "ppq"},
	kCastF32:         {"cast_bf16_f32", "ppq"},
	kRoPE:            {"rope", "ppppiiif"},
	kRMSNorm:         {"rmsnorm_fwd", "ppppiif"},
	kRMSNormBwdDX:    {"rmsnorm_bwd_dx", "pppppii"},
	kColsumPartial:   {"colsum_partial", "ppppiii"},
	kColsumFinish:    {"colsum_finish", "ppii"},
	kReducePartial:   {"reduce_partial", "ppqi"},
	kReduceFinish:    {"reduce_finish", "ppi"},
	kCrossEntropy:    {"cross_entropy", "pppppiifi"},
	kAttnFwd1:        {"attn_fwd_t1", attnFwdSig},
	kAttnFwd2:        {"attn_fwd_t2", attnFwdSig},
	kAttnFwd4:        {"attn_fwd_t4", attnFwdSig},
	kAttnFwd8:        {"attn_fwd_t8", attnFwdSig},
	kAttnDQ1:         {"attn_bwd_dq_t1", attnDQSig},
	kAttnDQ2:         {"attn_bwd_dq_t2", attnDQSig},
	kAttnDQ4:         {"attn_bwd_dq_t4", attnDQSig},
	kAttnDQ8:         {"attn_bwd_dq_t8", attnDQSig},
	kAttnDKV1:        {"attn_bwd_dkv_t1", attnDKVSig},
	kAttnDKV2:        {"attn_bwd_dkv_t2", attnDKVSig},
	kAttnDKV4:        {"attn_bwd_dkv_t4", attnDKVSig},
	kAttnDKV8:        {"attn_bwd_dkv_t8", attnDKVSig},
	kAttnPrep:        {"attn_bwd_prep", "pppqi"},
	kAttnReduce:      {"attn_bwd_reduce", "ppppqi"},
	kAttnFwdMMA64:    {"attn_fwd_mma64", attnFwdSig},
	kAttnFwdMMA128:   {"attn_fwd_mma128", attnFwdSig},
	kAttnDQMMA64:     {"attn_bwd_dq_mma64", attnDQSig},
	kAttnDQMMA128:    {"attn_bwd_dq_mma128", attnDQSig},
	kAttnDKVMMA64:    {"attn_bwd_dkv_mma64", attnDKVSig},
	kAttnDKVMMA128:   {"attn_bwd_dkv_mma128", attnDKVSig},
	kRouterTopK:      {"router_topk", "pppppiiii"},
	kRouterBwd:       {"router_bwd", "pppppppiiii"},
	kMoEDispatch:     {"moe_dispatch", "ppppiii"},
	kMoECombine:      {"moe_combine", "ppppqiii"},
	kMoECombineBwdDY: {"moe_combine_bwd_dy", "ppppqii"},
	kMoECombineBwdDW: {"moe_combine_bwd_dw", "ppppqii"},
	kCEChunkStats:    {"ce_chunk_stats", "ppppppiii"},
	kCEFinish:        {"ce_finish", "pppppppppq"},
	kCEChunkGrad:     {"ce_chunk_grad", "ppppiif"},
}

const (
	attnFwdSig = "pppppp" + "iiiiiiif" + "ifqiii"
	attnDQSig  = "ppppppp" + "p" + "iiiif" + "ifqiii"
	attnDKVSig = "pppppppp" + "p" + "iiiif" + "ifqiii" + "q"
)

func (k kernel) String() string { return kernelInfo[k].name }
