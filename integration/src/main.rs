//! The heapprof command (work in progress).

fn main() {
    eprintln!("heapprof: no commands yet");
    std::process::exit(2);
}
