package worker

// handlerStack is the frame growStack takes: with the frames above it, the
// runtime grows the stack to 16 KiB, which holds a run's deepest common
// path (the stream assembler's JSON decoding under the upstream call,
// go-redis under the gate and the save). asynq runs every task on a new
// goroutine, which starts small and grows its stack by doubling, each time
// copying it and adjusting every frame on it — deep in the run, where
// there are many frames to adjust. Grown once at the top of the run, while
// the stack holds four frames, it costs one small copy. Measured with
// `go run ./bench/overhead -profile DIR` (8000 jobs): runtime.newstack
// 0.28 s → 0.17 s of the worker's CPU, this copy included; a 16 KiB frame
// (a 32 KiB stack, from the runtime's shared pool of large stacks) saved
// less.
const handlerStack = 12 << 10

// growStack grows the calling goroutine's stack in one step (see
// handlerStack). i is 0: an index the compiler cannot see through keeps
// the frame from being optimised away.
//
//go:noinline
func growStack(i int) byte {
	var frame [handlerStack]byte
	return frame[i]
}
