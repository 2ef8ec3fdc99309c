//! A workflow over a text corpus: split it into chunks, count the words of
//! each chunk in a group, merge the counts in a chord's body, then write
//! the most frequent words to a file in a chained step.
//!
//! ```sh
//! cargo run --release --example word_pipeline                # a generated corpus
//! cargo run --release --example word_pipeline -- corpus.txt  # your own text
//! ```
//!
//! The workflow is typed end to end: the group gives one count map per
//! chunk, the body takes exactly that `Vec` and gives the merged top list,
//! and the last step takes that list. It runs in the pool's workers; the
//! caller only watches its progress (steps done out of all) until it ends.

use forkpool::{JobError, Pool, RetryOn, RetryPolicy};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines per job.
const CHUNK_LINES: usize = 2_000;
/// Words kept in the top list.
const TOP: usize = 15;

/// Counts the words of a chunk of text (lower-cased, letters only).
fn count_words(text: String) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for word in text
        .split(|c: char| !c.is_alphabetic() && c != '\'')
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

/// The chord's body: every chunk's counts merged, the most frequent first.
fn merge(all: Vec<HashMap<String, u64>>) -> Vec<(String, u64)> {
    let mut total: HashMap<String, u64> = HashMap::new();
    for counts in all {
        for (word, n) in counts {
            *total.entry(word).or_insert(0) += n;
        }
    }
    let mut words: Vec<(String, u64)> = total.into_iter().collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    words.truncate(TOP);
    words
}

/// The last step: writes the top words to a file; gives its path.
fn write_top(top: Vec<(String, u64)>) -> String {
    let path = std::env::temp_dir().join("forkpool-top-words.txt");
    let mut out = String::new();
    for (rank, (word, n)) in top.iter().enumerate() {
        out.push_str(&format!("{:>2}. {word:<12} {n}\n", rank + 1));
    }
    std::fs::write(&path, out).expect("write the top words");
    path.display().to_string()
}

/// A corpus of `lines` lines drawn from common English words with Zipf's
/// law (the word of rank r comes up about 1/r as often as the first), so
/// that the counts look like a real text's. Deterministic.
fn generated_corpus(lines: usize) -> String {
    const WORDS: &str = "the of and to in a is that for it as was with be by on not he i \
        this are or his from at which but have an they you were her she there one all we \
        their been has would when who will more no if out so said what up its about into \
        than them can only other new some could time these two may then do first any my \
        now such like our over man me even most made after also did many before must \
        through back years where much your way well down should because each just those \
        people how too little state good very make world still own see men work long get \
        here between both life being under never day same another know while last might";
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    // Cumulative Zipf weights.
    let weights: Vec<f64> = (1..=words.len()).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(words.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut text = String::with_capacity(lines * 64);
    for _ in 0..lines {
        for i in 0..(8 + (next() * 8.0) as usize) {
            let x = next();
            let rank = cumulative.partition_point(|&c| c < x).min(words.len() - 1);
            if i > 0 {
                text.push(' ');
            }
            text.push_str(words[rank]);
        }
        text.push_str(".\n");
    }
    text
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let corpus = match std::env::args().nth(1) {
        Some(path) => std::fs::read_to_string(&path)?,
        None => generated_corpus(1_000_000),
    };
    let lines: Vec<&str> = corpus.lines().collect();
    let chunks: Vec<String> = lines.chunks(CHUNK_LINES).map(|c| c.join("\n")).collect();
    println!(
        "corpus: {} lines, {:.1} MB, split into {} chunks of {CHUNK_LINES} lines ({:.0?})",
        lines.len(),
        corpus.len() as f64 / 1e6,
        chunks.len(),
        started.elapsed()
    );

    let pool = Pool::builder()
        .workers(num_cpus())
        .time_limit(Duration::from_secs(60))
        .build()?;
    // Count each chunk (retrying a worker that crashes), merge the counts
    // once every chunk is counted, then write the top list.
    let counting = pool
        .job(count_words)
        .retry(RetryPolicy::new(2).on(RetryOn::CRASHED));
    let workflow = counting
        .starmap(chunks)
        .chord(pool.job(merge))
        .then(pool.job(write_top))
        .on_error(|e: &JobError| eprintln!("the pipeline failed: {e}"));
    println!(
        "workflow: {} jobs ({} counts, a merge, a write)",
        workflow.steps(),
        workflow.steps() - 2
    );

    let run = Instant::now();
    let handle = workflow.submit();
    while !handle.wait_timeout(Duration::from_millis(50)) {
        if let Some(p) = handle.progress() {
            println!("  {} of {} jobs done", p.done, p.total);
        }
    }
    let path = handle.get()?;
    println!(
        "done in {:.0?}; top {TOP} words, written to {path}:",
        run.elapsed()
    );
    print!("{}", std::fs::read_to_string(&path)?);
    let s = pool.stats();
    println!(
        "pool: {} jobs submitted, {} completed, {} failed",
        s.submitted, s.completed, s.failed
    );
    pool.join()?;
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
