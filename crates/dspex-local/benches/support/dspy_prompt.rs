//! The ~390-token DSPy ChatAdapter prompt that the local-model bench and
//! the `bench` example time (shared so both measure the same text).

/// A DSPy ChatAdapter-style system message: field descriptions, format,
/// instructions, plus one demo.
pub(crate) fn system_prompt() -> String {
    let mut s = String::from(
        "Your input fields are:\n1. `context` (str): facts that may help answer\n\
         2. `question` (str): the user's question\nYour output fields are:\n\
         1. `reasoning` (str): step-by-step thinking\n2. `answer` (str): a short factual answer\n\
         All interactions will be structured in the following way, with the appropriate values filled in.\n\n\
         [[ ## context ## ]]\n{context}\n\n[[ ## question ## ]]\n{question}\n\n\
         [[ ## reasoning ## ]]\n{reasoning}\n\n[[ ## answer ## ]]\n{answer}\n\n\
         [[ ## completed ## ]]\n\
         In adhering to this structure, your objective is: \n\
         Answer questions about geography with short factual answers. Use the context when it is relevant, \
         think step by step in the reasoning field, and keep the answer to a few words.\n\n",
    );
    s.push_str(
        "Here is an example.\n\n[[ ## context ## ]]\nThe Danube flows through ten countries, \
         including Germany, Austria, Hungary and Romania, and empties into the Black Sea.\n\n\
         [[ ## question ## ]]\nInto which sea does the Danube flow?\n\n[[ ## reasoning ## ]]\n\
         The context says the Danube empties into the Black Sea.\n\n[[ ## answer ## ]]\nThe Black Sea\n\n\
         [[ ## completed ## ]]\n",
    );
    s
}

pub(crate) fn user_turn(question: &str) -> String {
    format!(
        "[[ ## context ## ]]\nParis is the capital and largest city of France. Lyon and Marseille are other large cities.\n\n\
         [[ ## question ## ]]\n{question}\n\n\
         Respond with the corresponding output fields, starting with the field `[[ ## reasoning ## ]]`, \
         then `[[ ## answer ## ]]`, and then ending with the marker for `[[ ## completed ## ]]`."
    )
}
