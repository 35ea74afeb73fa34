pub struct State {}
